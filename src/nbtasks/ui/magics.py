"""``%%task`` and ``%runs``: the notebook's way to define, trigger and browse tasks.

``%%task NAME`` turns the cell body into task NAME (a new version when the body changes)
and triggers one run. Its payload is the ``--in`` names plus the names the body reads from
the notebook without defining them (found statically, captured with dill); its outputs are
the ``--out`` names (by default, the names the body assigns, not those it only imports),
assigned back into the notebook when the run completes.
"""

from __future__ import annotations

import ast
import builtins
import threading
import types
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from nbtasks.core.errors import PayloadError
from nbtasks.core.serialize import dumps_checked


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def names_of(source: str) -> tuple[list[str], list[str]]:
    """(read, assigned): names the code reads that it does not define before, in order of
    first use, and names its top level assigns, in order."""
    tree = ast.parse(source)
    assigned: list[str] = []
    read: list[str] = []
    local_scopes: set[str] = set()
    imported: set[str] = set()  # bound by an import: never an output by default
    bound: set[str] = set()  # bound otherwise

    class Visitor(ast.NodeVisitor):
        def visit_Name(self, node: ast.Name) -> None:
            if isinstance(node.ctx, ast.Store):
                bound.add(node.id)
                if node.id not in assigned:
                    assigned.append(node.id)
            elif node.id not in assigned and node.id not in read:
                read.append(node.id)

        def _define(self, name: str, by_import: bool = False) -> None:
            (imported if by_import else bound).add(name)
            if name not in assigned:
                assigned.append(name)

        def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
            self._define(node.name)
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None:
                    self.visit(default)
            for decorator in node.decorator_list:
                self.visit(decorator)
            args = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
            for inner in ast.walk(node):
                if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    local_scopes.add(inner.id)
            for statement in node.body:
                for inner in ast.walk(statement):
                    if (isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Load)
                            and inner.id not in args and inner.id not in local_scopes
                            and inner.id not in assigned and inner.id not in read):  # fmt: skip
                        read.append(inner.id)

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_ClassDef(self, node: ast.ClassDef) -> None:
            self._define(node.name)
            for base in node.bases:
                self.visit(base)

        def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
            for alias in node.names:
                self._define((alias.asname or alias.name).split(".")[0], by_import=True)

        visit_ImportFrom = visit_Import

        def visit_comprehension_scope(self, node: ast.AST) -> None:
            targets = {n.id for g in node.generators  # type: ignore[attr-defined]
                       for n in ast.walk(g.target) if isinstance(n, ast.Name)}  # fmt: skip
            for inner in ast.walk(node):
                if (isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Load)
                        and inner.id not in targets and inner.id not in assigned
                        and inner.id not in read):  # fmt: skip
                    read.append(inner.id)

        visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = (
            visit_comprehension_scope
        )

    Visitor().visit(tree)
    top_level = [n for n in assigned if not n.startswith("_") and (n not in imported or n in bound)]
    return [n for n in read if not hasattr(builtins, n)], top_level


class CellBody:
    """A ``%%task`` cell body as a task function: inputs in, named outputs out.

    The body runs under the file name ``<%%task NAME>``, numbered as the cell is (its
    ``%%task`` line is line 1), and its text goes to the worker's ``linecache``, so a
    traceback shows the cell's own lines. Its IPython syntax (``%magic``, ``!cmd``) is
    transformed in the kernel and runs in the worker's IPython shell."""

    def __init__(self, source: str, outputs: list[str], ipython_syntax: bool,
                 name: str = "", header: str = "", python: str | None = None) -> None:  # fmt: skip
        self.source = source  # the body as written
        self.outputs = outputs
        self.ipython_syntax = ipython_syntax
        self.name = name
        self.header = header  # the cell's first line, "%%task NAME ..."
        self.python = python  # the body as Python (IPython syntax transformed)

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        # versions stored before the header and the transformed body were kept lack them
        header, python = getattr(self, "header", ""), getattr(self, "python", None)
        filename = f"<%%task {getattr(self, 'name', '') or 'cell'}>"
        if self.ipython_syntax:
            from IPython.core.interactiveshell import InteractiveShell

            shell = InteractiveShell.instance()
            python = python if python is not None else shell.transform_cell(self.source)
            namespace = shell.user_ns
        else:
            python = self.source
            namespace = {"__name__": "__main__"}
        namespace.update(payload)
        # show the lines as written, where the transformed body keeps their numbers
        shown = self.source if _lines(self.source) == _lines(python) else python
        offset = 1 if header else 0
        from nbtasks.core.sources import register

        register({filename: f"{header}\n{shown}" if header else shown})
        exec(compile("\n" * offset + python, filename, "exec"), namespace)
        return {
            name: namespace[name]
            for name in self.outputs
            if name in namespace and not isinstance(namespace[name], types.ModuleType)
        }


def _lines(text: str) -> int:
    return len(text.rstrip("\n").splitlines())


@magics_class
class TaskMagics(Magics):
    @magic_arguments()
    @argument("name", help="the task id")
    @argument("--in", dest="inputs", default="", help="names to send to the task, comma separated")
    @argument("--out", dest="outputs", default=None, help="names to assign back, comma separated")
    @argument("--retries", type=int, default=None, help="retries after a failed attempt")
    @argument("--max-duration", dest="max_duration", default=None, help="per attempt, e.g. 5m")
    @argument("--queue", default=None, help="the queue's name")
    @argument("--concurrency", type=int, default=None, help="the queue's concurrency limit")
    @argument("--delay", default=None, help="start after this long, e.g. 30s")
    @argument("--ttl", default=None, help="expire if still queued after this long")
    @argument("--key", default=None, help="idempotency key")
    @argument("--tag", action="append", default=None, help="a tag (repeatable)")
    @argument("--bg", action="store_true", help="return at once; the run's handle is _")
    @cell_magic
    def task(self, line: str, cell: str) -> Any:
        """Define (or re-version) task NAME from the cell body and trigger one run."""
        try:
            args = parse_argstring(self.task, line)
        except UsageError:
            raise
        except SystemExit:
            raise UsageError(f"%%task: cannot parse the options {line!r}") from None
        return run_cell_task(self.shell, args, cell, line)

    @magic_arguments()
    @argument("--status", default=None, help="only runs with this status")
    @argument("--task", default=None, help="only runs of a task whose id contains this")
    @argument("--tag", default=None, help="only runs with a tag containing this")
    @argument("--id", default=None, help="only runs whose id starts with this")
    @argument("--limit", type=int, default=25, help="rows per page")
    @line_magic
    def runs(self, line: str) -> Any:
        """Show the interactive run table."""
        try:
            args = parse_argstring(self.runs, line)
        except SystemExit:
            raise UsageError(f"%runs: cannot parse the options {line!r}") from None
        from nbtasks.client.runs import runs

        try:
            return runs.table(status=args.status, task=args.task, tag=args.tag, limit=args.limit,
                              id=args.id)  # fmt: skip
        except ValueError as exc:
            raise UsageError(f"%runs: {exc}") from None


def _split(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def run_cell_task(shell: Any, args: Any, cell: str, line: str = "") -> Any:
    from nbtasks.client.task import Task
    from nbtasks.core.options import Queue, Retry

    python = shell.transform_cell(cell)
    try:
        read, assigned = names_of(python)
    except SyntaxError as exc:
        raise UsageError(f"%%task {args.name}: the cell is not valid Python: {exc}") from None
    inputs = list(dict.fromkeys([*_split(args.inputs), *[n for n in read if n in shell.user_ns]]))
    missing = [n for n in _split(args.inputs) if n not in shell.user_ns]
    if missing:
        raise UsageError(f"%%task {args.name}: --in names {', '.join(missing)}, not defined")
    outputs = _split(args.outputs) if args.outputs is not None else assigned
    payload = {name: shell.user_ns[name] for name in inputs}
    sizes = []
    for name, value in payload.items():
        try:
            sizes.append(f"{name} ({_size(len(dumps_checked(name, value)))})")
        except PayloadError as exc:  # "<name> cannot be serialised with dill: ..."
            raise UsageError(f"%%task {args.name}: the input {exc}") from None
    options: dict[str, Any] = {}
    try:
        task = Task(
            CellBody(cell, outputs, python != cell, args.name, f"%%task {line}".rstrip(), python),
            id=args.name,
            retry=Retry(max_attempts=args.retries + 1) if args.retries is not None else None,
            max_duration=args.max_duration,
            queue=Queue(args.queue, args.concurrency) if args.queue else None,
            ttl=args.ttl,
            source=cell,
        )
        for option, value in (("delay", args.delay), ("idempotency_key", args.key),
                              ("tags", args.tag)):  # fmt: skip
            if value is not None:
                options[option] = value
        if sizes:
            print("inputs:", ", ".join(sizes))
        if args.bg:
            handle = task.trigger(payload, **options)
            BACKGROUND.add(shell, handle)
            if outputs:
                print(f"in the background: {', '.join(outputs)} assigned when it completes")
            return handle  # the cell's output: Out[n], and _ until the next output
        result = task.trigger_and_wait(payload, **options)
    except ValueError as exc:
        raise UsageError(f"%%task {args.name}: {exc}") from None
    values = result.unwrap()
    shell.user_ns.update(values)
    if values:
        print("assigned:", ", ".join(values))
    return None


class Background:
    """``%%task --bg`` runs whose outputs are still to be assigned into the notebook.

    A thread per run waits for it and assigns its outputs as soon as it completes, while
    the kernel lives; and before each cell runs, the runs that have completed are assigned
    first, so a cell that follows a run's end always sees its outputs. A newer ``--bg``
    run of the same task takes the place of one still pending, so an older run that ends
    later never overwrites its outputs. ``_`` is never assigned: it stays IPython's (the
    ``--bg`` cell's output is the run's handle)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, tuple[Any, Any]] = {}  # run id -> (shell, handle)

    def add(self, shell: Any, handle: Any) -> None:
        with self.lock:
            for run_id, (_shell, older) in list(self.pending.items()):
                if older.task_id == handle.task_id:
                    del self.pending[run_id]
            self.pending[handle.id] = (shell, handle)
        threading.Thread(target=self._wait, args=(handle,), daemon=True,
                         name=f"nbtasks-bg-{handle.id}").start()  # fmt: skip

    def _wait(self, handle: Any) -> None:
        from nbtasks.client.config import in_background

        try:
            handle.wait()
        except Exception:  # the engine was shut down: nothing to assign
            pass
        with in_background():  # a server stopped meanwhile is not started again for this
            self.assign(handle.id)

    def assign(self, run_id: str) -> None:
        with self.lock:  # each run's outputs are assigned once
            shell, handle = self.pending.pop(run_id, (None, None))
            if handle is None:
                return
            try:
                run = handle.retrieve()
                if run.status.value == "COMPLETED":
                    shell.user_ns.update(
                        {k: v for k, v in run.output.items() if not k.startswith("_")}
                    )
            except Exception:  # its own view shows how it ended
                pass

    def before_cell(self, *_: Any) -> None:
        """IPython's ``pre_run_cell``: assign what completed since the last cell."""
        from nbtasks.client.config import in_background

        with self.lock:  # an assignment under way (in its thread) ends first
            pending = list(self.pending.items())
        for run_id, (_shell, handle) in pending:
            try:
                with in_background():  # a hook before every cell starts no server
                    final = handle.retrieve().is_final
            except Exception:
                final = True  # the engine is gone: drop it
            if final:
                with in_background():
                    self.assign(run_id)


BACKGROUND = Background()


def load(shell: Any) -> None:
    shell.register_magics(TaskMagics)
    try:  # loaded again: still one hook
        shell.events.unregister("pre_run_cell", BACKGROUND.before_cell)
    except ValueError:
        pass
    shell.events.register("pre_run_cell", BACKGROUND.before_cell)
