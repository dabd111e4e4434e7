"""Every run records where it was triggered from (``Run.origin``): the notebook or script
that triggered it, and a child run its root's. The triggering process names itself (once
per connection to its store's server) and the name travels with its runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nbtasks import RunStatus, runs
from nbtasks.client.config import origin
from test_kernel import SETUP, Kernel

from conftest import PYTHONPATH, start_script

TIMEOUT = 60.0  # upper bound for a subprocess; never part of an assertion

NESTED = """
from nbtasks import task

@task
def leaf(n):
    return n

@task
def middle(n):
    batch = leaf.batch_trigger_and_wait([1, 2])
    return leaf.trigger_and_wait(n).output + sum(r.output for r in batch.runs)

@task
def top(n):
    return middle.trigger_and_wait(n).output

print(top.trigger_and_wait(10).output, flush=True)
"""


def test_a_scripts_runs_and_their_children_record_the_script(
    nb: object, store_path: str, tmp_path: Path
) -> None:
    proc = start_script(NESTED, tmp_path, env={"NBTASKS_STORE": store_path}, name="train.py")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out.split() == ["13"]
    made = runs.list()
    assert sorted((r.depth, r.task_id) for r in made) == [
        (0, "top"), (1, "middle"), (2, "leaf"), (2, "leaf"), (2, "leaf"),
    ]  # fmt: skip
    assert {r.status for r in made} == {RunStatus.COMPLETED}
    # Triggered inside a task (in a worker), a run has its root's origin.
    assert [r.origin for r in made] == ["train.py"] * 5
    assert [r.id for r in runs.list(origin="train.py")] == [r.id for r in made]
    assert list(runs.list(origin="other.py")) == []
    assert runs.retrieve(made[0].id).origin == "train.py"  # the stored run, as listed


def test_a_notebook_kernels_runs_record_the_notebooks_path_in_the_project(
    tmp_path: Path,
) -> None:
    """Jupyter starts a notebook's kernel in the notebook's folder with JPY_SESSION_NAME
    set to its path; the store here is the project's, one folder up."""
    notebook = tmp_path / "reports" / "Weekly Report.ipynb"
    notebook.parent.mkdir()
    store = tmp_path / ".nbtasks" / "runs.duckdb"
    k = Kernel(notebook.parent,
               env={"JPY_SESSION_NAME": str(notebook), "NBTASKS_STORE": str(store)})  # fmt: skip
    try:
        errors = [m for m in k.run(SETUP) if m["msg_type"] == "error"]
        assert not errors, errors
        assert k.value("slow.trigger_and_wait(0).status.value") == "'COMPLETED'"
        errors = [m for m in k.run("%%task noted\nx = 1") if m["msg_type"] == "error"]
        assert not errors, errors
        origins = "sorted((r.task_id, r.origin) for r in runs.list())"
        expected = [("noted", "reports/Weekly Report.ipynb"),
                    ("slow", "reports/Weekly Report.ipynb")]  # fmt: skip
        assert ast.literal_eval(k.value(origins)) == expected  # (pretty-printed)
    finally:
        k.run("import nbtasks; nbtasks.shutdown(stop_server=True)")
        k.close()


@pytest.mark.parametrize(
    ("notebook", "expected"),
    [
        ("/work/proj/analysis.ipynb", "analysis.ipynb"),
        ("/work/proj/reports/q1/Weekly Report.ipynb", "reports/q1/Weekly Report.ipynb"),
        ("/work/other/analysis.ipynb", "analysis.ipynb"),  # outside the project: the name
        ("/work/project2/analysis.ipynb", "analysis.ipynb"),  # a sibling with a longer name
        ("reports/analysis.ipynb", "analysis.ipynb"),  # relative to Jupyter's root, unknown here
    ],
)
def test_a_notebook_is_named_by_its_path_in_the_project_else_by_its_name(
    monkeypatch: pytest.MonkeyPatch, notebook: str, expected: str
) -> None:
    monkeypatch.setenv("JPY_SESSION_NAME", notebook)
    assert origin("/work/proj/.nbtasks/runs.duckdb") == expected


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["tool.py"], "tool.py"),
        (["-m", "tool"], "tool.py"),
        (["-m", "pkg"], "pkg"),  # a package's __main__.py: the package
        (["-c", "import tool"], "python"),
    ],
)
def test_a_process_without_a_notebook_is_named_by_what_python_runs(
    tmp_path: Path, command: list[str], expected: str
) -> None:
    code = "from nbtasks.client.config import origin\nprint(origin('/p/.nbtasks/runs.duckdb'))\n"
    (tmp_path / "tool.py").write_text(code)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__main__.py").write_text(code)
    done = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{PYTHONPATH}:{tmp_path}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_an_ipython_shell_without_a_notebook_is_ipython(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "-c",
         "from nbtasks.client.config import origin; print(origin('/p/.nbtasks/runs.duckdb'))"],
        cwd=tmp_path,
        env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "ipython"
