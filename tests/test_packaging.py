"""The wheel ships what a user's notebook needs beyond the Python modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_the_widget_assets_and_the_autoload_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("nbtasks-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("common.js", "run.js", "batch.js", "table.js", "nbtasks.css"):
        assert f"nbtasks/widgets/{asset}" in names
        assert (ROOT / "widgets" / asset).read_bytes() == zipfile.ZipFile(wheel).read(
            f"nbtasks/widgets/{asset}"
        )
    assert "nbtasks/jupyter-config/nbtasks-autoload.py" in names
    assert "nbtasks/autoload.py" in names


def test_installing_gives_the_nbtasks_command(tmp_path: Path) -> None:
    """The wheel declares the ``nbtasks`` console script, and it runs the CLI."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("nbtasks-*.whl")
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "[console_scripts]" in text and "nbtasks = nbtasks.cli:main" in text
    done = subprocess.run(
        [sys.executable, "-c", "from nbtasks.cli import main; main()", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "server" in done.stdout and "runs" in done.stdout
