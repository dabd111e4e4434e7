"""Fault injection, the parent's side: start ``fault_driver.py``, SIGKILL it (and every
process under it) at a random moment, optionally damage the journal it left, recover the
store in a fresh process through nbtasks, then check invariants with SQL on the closed file.

The journal files are opaque bytes here: nothing decodes them. To know which acknowledged
runs a damaged journal must still hold, the parent copies both journal files each time it
reads new lines of the report (``Snapshot``). A run acknowledged before a snapshot lives in
the tables or in frames written before it; a frame is never rewritten until a fold has put
it in the tables. So if the damage in a file starts at or past the first byte where that
file differs from the snapshot, only bytes written after the acknowledgement were damaged
(what a torn write at a power loss could destroy), and the run must survive. Runs whose
bytes may have been destroyed are counted apart ("destroyed"), never as lost; every run,
destroyed or not, must still be consistent.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psutil

from conftest import wait_for

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
DRIVER = TESTS / "fault_driver.py"
SCENARIOS = ("trigger", "batch", "complete", "fold", "torn")
# How long after the driver's "go" the kill comes, drawn uniformly (seconds).
KILL_WINDOW = {"trigger": 0.6, "batch": 0.8, "complete": 0.8, "fold": 1.5, "torn": 0.8}
JOURNALS = (".journal", ".journal.1")
# Statuses no run may keep once a store has been opened again (recovery moves them on).
LIVE = ("QUEUED", "EXECUTING", "REATTEMPTING", "FROZEN")


@dataclass
class Trial:
    """What one kill showed."""

    scenario: str
    seed: int
    directory: Path
    acked: int = 0
    finals: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, intact, missing
    destroyed: list[str] = field(default_factory=list)  # their bytes were damaged
    problems: list[tuple[str, str]] = field(default_factory=list)  # (run id or "-", what)
    notes: list[str] = field(default_factory=list)

    @property
    def inconsistent(self) -> int:
        return len({run_id for run_id, _ in self.problems})

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.problems)

    def describe(self) -> str:
        verdict = f"FAILED, its files kept in {self.directory}" if self.failed else "passed"
        lines = [f"{self.scenario} trial (seed {self.seed}) {verdict}"]
        lines += [f"  lost (acknowledged, not in runs): {run_id}" for run_id in self.lost[:10]]
        lines += [f"  {run_id}: {what}" for run_id, what in self.problems[:20]]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Line:
    kind: str  # "ack" or "final"
    run_id: str
    status: str | None
    snapshot: int  # index of the first journal snapshot taken after the line was read


class Reader:
    """Complete lines of the driver's report, as they come; with ``snapshots``, a copy of
    both journal files each time new lines were read."""

    def __init__(self, report: Path, store: Path, snapshots: bool) -> None:
        self.report, self.store, self.take = report, store, snapshots
        self.offset = 0
        self.go = False
        self.lines: list[Line] = []
        self.snapshots: list[dict[str, bytes]] = []

    def poll(self) -> None:
        try:
            with open(self.report, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line cut short by the kill is not counted
        if not end:
            return
        self.offset += end
        new = []
        for raw in data[:end].decode().splitlines():
            kind, *rest = raw.split()
            if kind == "go":
                self.go = True
            else:
                new.append(Line(kind, rest[0], rest[1] if len(rest) > 1 else None, -1))
        if new and self.take:
            self.snapshots.append(journal_bytes(self.store))
            for line in new:
                line.snapshot = len(self.snapshots) - 1
        self.lines += new


def journal_bytes(store: Path) -> dict[str, bytes]:
    found = {}
    for suffix in JOURNALS:
        try:
            found[suffix] = Path(str(store) + suffix).read_bytes()
        except FileNotFoundError:
            pass
    return found


def common_prefix(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    lo, hi = 0, min(len(a), len(b))
    step = 1 << 12
    while lo < hi and a[lo : lo + step] == b[lo : lo + step]:
        lo += step
    hi = min(hi, lo + step)
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return min(lo, len(a), len(b))


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the driver's process group and every process under it (workers lead
    process groups of their own), and wait until all of them are gone."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it died already: its error is the story
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()

    def gone() -> bool:  # a zombie is gone: whoever adopted it reaps it when it will
        return not any(_alive(p) for p in tree)

    wait_for(gone, f"the driver's processes to die: {tree}", interval=0.002)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "NBTASKS_NO_AUTOLOAD": "1", "JPY_SESSION_NAME": ""}


def _damage(store: Path, rng: random.Random, trial: Trial, reader: Reader) -> None:
    """Truncate, zero the tail of, or flip bytes in one journal file at a random offset in
    its written part; sort the acknowledged runs into those that must survive and those
    whose bytes may have been destroyed."""
    mode = rng.choice(("truncate", "zero", "flip"))
    found = journal_bytes(store)
    if not found:
        trial.notes.append("no journal file to damage")
        return
    suffix = rng.choice(sorted(found))
    data = found[suffix]
    written = len(data.rstrip(b"\0"))  # past this the file is zero-filled ahead
    at = rng.randrange(written) if written else 0
    path = Path(str(store) + suffix)
    if mode == "truncate":
        os.truncate(path, at)
    elif mode == "zero":
        path.write_bytes(data[:at] + bytes(len(data) - at))
    else:
        flipped = bytearray(data)
        for i in range(at, min(len(data), at + rng.randint(1, 16))):
            flipped[i] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(flipped))
    trial.notes.append(f"damage: {mode} {suffix} at byte {at} of {written} written")
    for line in reader.lines:
        before = reader.snapshots[line.snapshot].get(suffix, b"")
        if at < common_prefix(before, data):
            line.snapshot = -2  # its bytes may be among those destroyed


def run_trial(scenario: str, seed: int, directory: Path) -> Trial:
    """One driver run, killed at a random moment; the store recovered and checked."""
    rng = random.Random(seed)
    trial = Trial(scenario, seed, directory)
    directory.mkdir(parents=True)
    store, report = directory / "runs.duckdb", directory / "report"
    delay = rng.uniform(0.0, KILL_WINDOW[scenario])
    argv = [scenario, str(store), str(report), str(rng.getrandbits(32))]
    with open(directory / "driver.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), *argv],
            env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True, cwd=directory,
        )  # fmt: skip
    reader = Reader(report, store, snapshots=scenario == "torn")
    try:

        def ready() -> bool:
            reader.poll()
            if not reader.go and proc.poll() is not None:
                raise AssertionError(f"the driver exited: {_tail(directory / 'driver.stderr')}")
            return reader.go

        wait_for(ready, "the driver to open its store", timeout=60)
        kill_at = time.monotonic() + delay  # the injected fault's moment, not a measure
        while time.monotonic() < kill_at:
            reader.poll()
            time.sleep(0.002)
        if proc.poll() is not None:
            raise AssertionError(f"the driver exited: {_tail(directory / 'driver.stderr')}")
    finally:
        _kill_tree(proc)
    reader.poll()
    if scenario == "torn":
        _damage(store, rng, trial, reader)
    killed = directory / "killed"  # the files as recovery found them: a reproducer
    killed.mkdir()
    for file in directory.glob("runs.duckdb*"):
        shutil.copy2(file, killed / file.name)
    if _recover(store, directory, trial):
        _check(store, reader.lines, trial)
    return trial


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def _recover(store: Path, directory: Path, trial: Trial) -> bool:
    """Open the store in a fresh process through nbtasks (recovery runs), and close it."""
    result: list[subprocess.CompletedProcess[str]] = []

    def opened() -> bool:
        proc = subprocess.run(
            [sys.executable, str(DRIVER), "verify", str(store)],
            env=_env(), capture_output=True, text=True, timeout=120, cwd=directory,
        )  # fmt: skip
        result[:] = [proc]
        return proc.returncode == 0 or "StoreLockedError" not in proc.stderr

    wait_for(opened, "the killed driver's lock on the store to go", timeout=30)
    proc = result[0]
    if proc.returncode != 0:
        (directory / "verify.stderr").write_text(proc.stderr)
        trial.problems.append(("-", f"the store did not open: {proc.stderr.strip()[-600:]}"))
        return False
    left = [s for s in JOURNALS if Path(str(store) + s).exists()]
    if left:
        trial.problems.append(("-", f"a clean close left journal files: {left}"))
    return True


CHECKS = {
    "COMPLETED without a COMPLETED attempt": """
        SELECT id FROM runs r WHERE status = 'COMPLETED' AND NOT EXISTS
            (SELECT 1 FROM attempts a WHERE a.run_id = r.id AND a.status = 'COMPLETED')""",
    "attempt_count differs from its attempts (or their numbers are not 1..n)": """
        SELECT r.id FROM runs r LEFT JOIN (
            SELECT run_id, count(*) AS n, count(DISTINCT number) AS d, max(number) AS top,
                   min(number) AS bottom
            FROM attempts GROUP BY run_id) a ON a.run_id = r.id
        WHERE r.attempt_count <> coalesce(a.n, 0) OR a.d <> a.n OR a.top <> a.n
           OR a.bottom <> 1""",
    "left in a live status after recovery": f"""
        SELECT id FROM runs WHERE status IN {LIVE}""",
    "an attempt left EXECUTING after recovery": """
        SELECT run_id FROM attempts WHERE status = 'EXECUTING'""",
    "no run_events row": """
        SELECT id FROM runs r
        WHERE NOT EXISTS (SELECT 1 FROM run_events e WHERE e.run_id = r.id)""",
    "status differs from its last event's (by at, then insertion)": """
        SELECT r.id FROM runs r JOIN (
            SELECT run_id, status, row_number() OVER
                (PARTITION BY run_id ORDER BY "at" DESC, rowid DESC) AS k
            FROM run_events) e ON e.run_id = r.id AND e.k = 1
        WHERE e.status <> r.status""",
    "attempts or events of a run not in runs": """
        SELECT run_id FROM attempts WHERE run_id NOT IN (SELECT id FROM runs)
        UNION SELECT run_id FROM run_events WHERE run_id NOT IN (SELECT id FROM runs)""",
    "a run id twice": """
        SELECT id FROM runs GROUP BY id HAVING count(*) > 1""",
}

# Event order: "at" is the engine's wall clock (microseconds) when the change was staged;
# ties are broken by insertion order (rowid). Told apart, not counted as failures.
ORDER_NOTES = {
    "runs whose last two events share their 'at' (insertion order decides)": """
        SELECT count(*) FROM (SELECT run_id, "at", row_number() OVER
            (PARTITION BY run_id ORDER BY "at" DESC, rowid DESC) AS k,
            count(*) OVER (PARTITION BY run_id, "at") AS same FROM run_events)
        WHERE k = 1 AND same > 1""",
    "runs whose events' insertion order disagrees with 'at'": """
        SELECT count(DISTINCT run_id) FROM (SELECT run_id, "at",
            lag("at") OVER (PARTITION BY run_id ORDER BY rowid) AS before FROM run_events)
        WHERE "at" < before""",
}


def _check(store: Path, lines: list[Line], trial: Trial) -> None:
    acked = sorted({line.run_id for line in lines if line.kind == "ack"})
    finals = {line.run_id: line for line in lines if line.kind == "final"}
    trial.acked, trial.finals = len(acked), len(finals)
    must = {line.run_id for line in lines if line.kind == "ack" and line.snapshot != -2}
    conn = duckdb.connect(str(store), read_only=True)
    try:
        present = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))", [acked]
            ).fetchall()
        }
        for run_id in acked:
            if run_id not in present:
                (trial.lost if run_id in must else trial.destroyed).append(run_id)
        for what, sql in CHECKS.items():
            trial.problems += [(row[0], what) for row in conn.execute(sql).fetchall()]
        statuses = dict(
            conn.execute(
                "SELECT id, status FROM runs WHERE id IN (SELECT unnest(?::VARCHAR[]))",
                [list(finals)],
            ).fetchall()
        )
        for run_id, line in finals.items():
            if statuses.get(run_id, line.status) != line.status:
                what = f"a wait returned {line.status}, the store says {statuses[run_id]}"
                if line.snapshot == -2:
                    trial.notes.append(f"{run_id}: {what} (its bytes were damaged)")
                else:
                    trial.problems.append((run_id, what))
        for what, sql in ORDER_NOTES.items():
            (count,) = conn.execute(sql).fetchone()
            if count:
                trial.notes.append(f"{count} {what}")
    finally:
        conn.close()
