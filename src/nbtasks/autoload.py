"""Opt in (or out) of loading nbtasks in every new Jupyter kernel of this environment.

    python -m nbtasks.autoload enable     # every new kernel has %%task and %runs
    python -m nbtasks.autoload disable    # back to %load_ext nbtasks
    python -m nbtasks.autoload status

IPython runs the ``*.py`` files of ``{sys.prefix}/etc/ipython/startup/`` when a kernel
starts; ``enable`` puts one small file there (``--user``: in the IPython profile's
``startup/`` instead), ``disable`` removes it. Nothing else is touched.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

FILE_NAME = "50-nbtasks-autoload.py"


def _source() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "jupyter-config", here.parent.parent / "jupyter-config"):
        if (candidate / "nbtasks-autoload.py").exists():
            return candidate / "nbtasks-autoload.py"
    raise FileNotFoundError("nbtasks-autoload.py is missing from the nbtasks install")


def startup_dir(user: bool) -> Path:
    if user:
        from IPython.paths import get_ipython_dir

        return Path(get_ipython_dir()) / "profile_default" / "startup"
    return Path(sys.prefix) / "etc" / "ipython" / "startup"


def enable(user: bool = False) -> Path:
    target = startup_dir(user) / FILE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_source(), target)
    return target


def disable(user: bool = False) -> Path | None:
    target = startup_dir(user) / FILE_NAME
    if target.exists():
        target.unlink()
        return target
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nbtasks.autoload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("enable", "disable", "status"))
    parser.add_argument("--user", action="store_true", help="the IPython profile, not this env")
    args = parser.parse_args(argv)
    target = startup_dir(args.user) / FILE_NAME
    if args.action == "enable":
        print(f"enabled: {enable(args.user)}")
    elif args.action == "disable":
        removed = disable(args.user)
        print(f"disabled: removed {removed}" if removed else f"already disabled ({target})")
    else:
        print(f"{'enabled' if target.exists() else 'disabled'} ({target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
