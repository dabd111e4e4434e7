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
