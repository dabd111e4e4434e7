"""The example notebooks execute and print exactly their committed outputs (nbval, strict).

Each notebook runs in its own ``pytest --nbval`` process, with the sanitize rules of
``notebooks/nbval-sanitize.cfg``; the notebooks' folder is passed explicitly, so the
fixtures of ``tests/conftest.py`` do not apply there. After a change of what nbtasks prints,
execute the notebooks again to update their outputs:

    .venv/bin/jupyter nbconvert --to notebook --execute --inplace notebooks/NAME.ipynb
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PYTHONPATH

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_outputs_are_reproduced(name: str) -> None:
    command = [
        sys.executable, "-m", "pytest", "--nbval", f"notebooks/{name}",
        "--nbval-sanitize-with", "notebooks/nbval-sanitize.cfg",
        "-p", "no:cacheprovider", "-q",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}  # kernels import the nbtasks under test
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110, env=env)
    assert done.returncode == 0, (
        f"{name} did not reproduce its outputs; if the change is intended, re-execute it "
        f"(see this module's docstring).\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    )
