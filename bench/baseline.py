"""``--baseline REF``: another commit of nbtasks, measured beside the work tree in one run.

The commit's ``src`` (and ``widgets``, ``jupyter-config``: the layout of this checkout) is
exported with ``git archive`` to ``bench/.baselines/<commit>/`` (gitignored, kept as a cache)
and compiled as ``scripts/bench`` compiles ``src``. Its measuring processes get that ``src``
first on ``PYTHONPATH``, so they import its nbtasks; so do the workers they start, since the
pool puts the package root it was imported from first on the workers' ``PYTHONPATH``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.children import REPO, child_env

CACHE = REPO / "bench" / ".baselines"
EXPORTED = ("src", "widgets", "jupyter-config", "pyproject.toml")  # what exists of them


class BaselineError(Exception):
    """REF is not a commit of this repository, or its nbtasks cannot be imported."""


@dataclass(frozen=True)
class Checkout:
    ref: str  # as given on the command line
    commit: str  # full sha
    short: str  # abbreviated sha
    src: Path  # put first on PYTHONPATH

    @property
    def label(self) -> str:
        named = "" if self.commit.startswith(self.ref) else f" ({self.ref})"
        return f"nbtasks @ {self.short}{named}"


def git(*args: str, binary: bool = False) -> str | bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=not binary, check=True
        )
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace") if binary else exc.stderr
        raise BaselineError(f"git {' '.join(args)}: {err.strip() or exc}") from exc
    except OSError as exc:
        raise BaselineError(f"git: {exc}") from exc
    return done.stdout if binary else done.stdout.strip()


def compile_src(src: Path) -> None:
    """Compile a checkout's modules, as a wheel install would: where
    ``PYTHONDONTWRITEBYTECODE`` is set, every measured process would compile them again.
    A module that does not compile fails where it is imported, in its own rows."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=False)


def export(ref: str) -> Checkout:
    """REF's files in the cache (exported once per commit), compiled."""
    commit = str(git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"))
    short = str(git("rev-parse", "--short", commit))
    root = CACHE / commit
    if not (root / "src").is_dir():
        present = set(str(git("ls-tree", "--name-only", commit)).splitlines())
        paths = [p for p in EXPORTED if p in present]
        if "src" not in paths:
            raise BaselineError(f"{ref} ({short}) has no src/")
        archive = git("archive", "--format=tar", commit, "--", *paths, binary=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{commit}-", dir=CACHE))
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(archive))) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # Python before 3.10.12 / 3.11.4: our own commit, trusted
                    tar.extractall(tmp)
            os.rename(tmp, root)  # atomic: a run beside this one sees all of it or nothing
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (root / "src").is_dir():  # else another run exported it first
                raise
    checkout = Checkout(ref=ref, commit=commit, short=short, src=root / "src")
    compile_src(checkout.src)
    return checkout


def pythonpath(src: Path | str, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``src`` first on ``PYTHONPATH``."""
    path = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path}


def check_import(src: Path) -> None:
    """A process with ``src`` first on PYTHONPATH imports nbtasks from it, not the installed
    one (site-packages, and an editable install's path, come after PYTHONPATH's)."""
    code = "import nbtasks; print(nbtasks.__file__)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=pythonpath(src, child_env(CACHE)), cwd=CACHE,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        raise BaselineError(f"import nbtasks from {src}: {exc}") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BaselineError(f"import nbtasks from {src} failed: {tail}")
    imported = Path(lines[-1]).resolve()
    if not imported.is_relative_to(src.resolve()):
        raise BaselineError(f"nbtasks was imported from {imported}, not from {src}")
