"""Fault injection: a kernel SIGKILLed at random moments loses no acknowledged run, and the
store it leaves recovers to a consistent state (``fault_harness.py`` holds the machinery).

Scenarios: kills during a trigger loop, during batch triggers, while many short runs finish,
while bursts of thousands of rows are folded into the tables, and kills followed by a
damaged journal (truncated, zero-filled or flipped at a random offset). Each trial draws its
own seed from the scenario's; a failing trial names it and keeps its files, including
``killed/``, the store as recovery found it.

    python tests/test_faults.py --trials 300            # the long run: a summary table
    python tests/test_faults.py --replay torn:123456    # one trial again, by its seed
    NBTASKS_FAULT_SEED=123 NBTASKS_FAULT_TRIALS=20 pytest tests/test_faults.py
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from fault_harness import SCENARIOS, Line, Trial, _check, _env, _recover, run_trial

CI_TRIALS = {"trigger": 4, "batch": 4, "complete": 4, "fold": 4, "torn": 6}


def _seed() -> int:
    return int(os.environ.get("NBTASKS_FAULT_SEED") or random.SystemRandom().getrandbits(32))


def run_scenario(scenario: str, trials: int, seed: int, directory: Path,
                 keep: bool = False) -> list[Trial]:  # fmt: skip
    """``trials`` kills of ``scenario``; the files of trials that pass are removed unless
    ``keep``."""
    rng = random.Random(f"{scenario}:{seed}")
    done = []
    for i in range(trials):
        trial = run_trial(scenario, rng.getrandbits(32), directory / f"{scenario}-{i}")
        if not (trial.failed or keep):
            shutil.rmtree(trial.directory)
        done.append(trial)
    return done


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_acknowledged_run_is_lost_and_recovery_is_consistent(
    scenario: str, tmp_path: Path
) -> None:
    seed = _seed()
    trials = int(os.environ.get("NBTASKS_FAULT_TRIALS") or CI_TRIALS[scenario])
    done = run_scenario(scenario, trials, seed, tmp_path)
    failed = [t for t in done if t.failed]
    assert not failed, f"NBTASKS_FAULT_SEED={seed}\n" + "\n".join(t.describe() for t in failed)
    assert sum(t.acked for t in done) > 0  # the kills came after runs were acknowledged


# A server killed while a fold is under way: the writer has swapped the journal files and
# writes the older one's frames to the tables (here it never finishes), while commits go on
# in the newer one; the run completed after the swap has its COMPLETED frame there.
FOLD_UNDER_WAY = """
import os, sys, threading
import nbtasks
from nbtasks.store import store

folding = threading.Event()

def write_tables(self, batches, last_seq):
    folding.set()
    threading.Event().wait()  # the fold never ends: the kernel is killed during it

store.Store._write_tables = write_tables
from fault_tasks import nap
from nbtasks.client import config
from nbtasks.service.host import Server
from nbtasks.service.places import place_of
from nbtasks.service.server import listen, take_lock

nbtasks.configure(store=sys.argv[1], workers=2)
place = place_of(sys.argv[1])  # the store's server runs in this process, killed with it
lock = take_lock(place)  # held until the process dies
server = Server(config.server_config(), place, listen(place), [])
batch = nap.batch_trigger([0.5] * 4)
assert folding.wait(15)  # no commit for 0.1 s: the writer folds the older file
result = batch.runs[0].wait(15)  # (still live: a wait that reads would wait for the fold)
print(" ".join(h.id for h in batch.runs), result.id, result.status.value, flush=True)
os._exit(0)
"""


def test_a_damaged_older_journal_file_leaves_the_store_consistent(tmp_path: Path) -> None:
    """Power loss tears only the newest frame, but media damage can hit any byte: then
    what is lost is lost, yet the store must open consistent. A kill during a fold leaves
    frames in both journal files; the older one is emptied here."""
    store = tmp_path / "runs.duckdb"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FOLD_UNDER_WAY), str(store)],
        env=_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    *acked, final_id, final_status = proc.stdout.split()
    assert final_status == "COMPLETED"
    os.truncate(str(store) + ".journal", 0)  # the older file: being folded at the kill
    trial = Trial("older-journal-damaged", 0, tmp_path)
    lines = [Line("ack", run_id, None, -2) for run_id in acked]  # their bytes are gone
    lines.append(Line("final", final_id, final_status, -2))
    assert _recover(store, tmp_path, trial)
    _check(store, lines, trial)
    assert not trial.problems, trial.describe()


def summary(results: dict[str, list[Trial]]) -> str:
    head = ("scenario", "trials", "acknowledged runs", "waits returned", "lost", "inconsistent",
            "destroyed by damage")  # fmt: skip
    rows = [head]
    for scenario, done in results.items():
        rows.append((
            scenario, len(done), sum(t.acked for t in done), sum(t.finals for t in done),
            sum(len(t.lost) for t in done), sum(t.inconsistent for t in done),
            sum(len(t.destroyed) for t in done) if scenario == "torn" else "-",
        ))  # fmt: skip
    table = [" | ".join(str(cell) for cell in row) for row in rows]
    table.insert(1, " | ".join("---" for _ in head))
    return "\n".join(f"| {line} |" for line in table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="in all, shared by scenarios")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", help="keep every trial's files in this directory")
    parser.add_argument("--replay", metavar="SCENARIO:SEED", help="one trial, by its seed")
    args = parser.parse_args()
    if args.replay:
        scenario, trial_seed = args.replay.split(":")
        trial = run_trial(scenario, int(trial_seed), Path(tempfile.mkdtemp()) / scenario)
        print(trial.describe(), f"\nfiles in {trial.directory}")
        return int(trial.failed)
    seed = args.seed if args.seed is not None else _seed()
    scenarios = args.scenario or list(SCENARIOS)
    directory = Path(args.keep or tempfile.mkdtemp(prefix="nbtasks-faults-"))
    print(f"seed {seed}, trial files under {directory}", flush=True)
    results = {}
    started = time.monotonic()
    for k, scenario in enumerate(scenarios):
        trials = args.trials // len(scenarios) + (k < args.trials % len(scenarios))
        results[scenario] = done = run_scenario(scenario, trials, seed, directory, bool(args.keep))
        for trial in done:
            if trial.failed or trial.notes:
                print(trial.describe(), flush=True)
    print(f"\n{summary(results)}\n\n{time.monotonic() - started:.0f} s")
    if not args.keep and not any(t.failed for done in results.values() for t in done):
        shutil.rmtree(directory)
    return int(any(t.failed for done in results.values() for t in done))


if __name__ == "__main__":
    sys.exit(main())
