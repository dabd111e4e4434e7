"""The wheel ships what a user's notebook needs beyond the Python modules."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once for the module."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(folder),
         str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (built,) = folder.glob("nbtasks-*.whl")
    return built


def test_wheel_carries_the_widget_assets_and_the_autoload_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("common.js", "run.js", "batch.js", "table.js", "nbtasks.css",
                  "dashboard.js", "dashboard.css"):  # fmt: skip
        assert f"nbtasks/widgets/{asset}" in names
        assert (ROOT / "widgets" / asset).read_bytes() == zipfile.ZipFile(wheel).read(
            f"nbtasks/widgets/{asset}"
        )
    assert "nbtasks/jupyter-config/nbtasks-autoload.py" in names
    assert "nbtasks/autoload.py" in names


def test_installing_gives_the_nbtasks_command(wheel: Path) -> None:
    """The wheel declares the ``nbtasks`` console script, and it runs the CLI."""
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "[console_scripts]" in text and "nbtasks = nbtasks.cli:main" in text
    done = subprocess.run(
        [sys.executable, "-c", "from nbtasks.cli import main; main()", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "server" in done.stdout and "runs" in done.stdout


def test_wheel_enables_the_dashboard_in_jupyter_server(wheel: Path) -> None:
    """Installing puts the server extension's switch where Jupyter looks for it
    (``{sys.prefix}/etc/jupyter/jupyter_server_config.d``), naming a module that has it."""
    archive = zipfile.ZipFile(wheel)
    where = ".data/data/etc/jupyter/jupyter_server_config.d/nbtasks.json"
    (switch,) = [n for n in archive.namelist() if n.endswith(where)]
    extensions = json.loads(archive.read(switch))["ServerApp"]["jpserver_extensions"]
    assert extensions == {"nbtasks.dashboard": True}
    from nbtasks.dashboard import _jupyter_server_extension_points

    ((point,),) = [_jupyter_server_extension_points()]
    module = importlib.import_module(point["module"])
    assert callable(module._load_jupyter_server_extension)
