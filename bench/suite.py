"""The benchmark run: every system and workload in its own process, then the report.

See ``bench/README.md``; started by ``scripts/bench`` (or ``python bench/run.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import baseline, report
from bench.children import REPO, child_env, cold_start, end_servers, run_module
from bench.systems import BASELINE, BY_KEY, SYSTEMS, System

RESULTS = REPO / "bench" / "results"
ALL_WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6", "attach")
QUICK_MIN_RATE = 1000.0  # --quick fails below this many nbtasks runs/s (gross regression)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description="nbtasks beside other task runners (bench/README.md)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="nbtasks and ProcessPoolExecutor, W1 (1,000 runs), W2 (100 calls) and "
        "attach (3 processes) only; exit 1 if nbtasks is below --min-rate runs/s",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure nbtasks at this commit (a git ref of this repository) beside the "
        "work tree's, in the same run: one more row, 'nbtasks @ <sha>' (bench/README.md)",
    )
    parser.add_argument(
        "--systems",
        default=",".join(s.key for s in SYSTEMS),
        help="comma-separated keys: " + ", ".join(BY_KEY),
    )
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    parser.add_argument("--w1-tasks", type=int, default=2000)
    parser.add_argument("--w1-repeat", type=int, default=1, help="W1 rounds, best reported")
    parser.add_argument("--w2-calls", type=int, default=200)
    parser.add_argument("--w3-tasks", type=int, default=200)
    parser.add_argument("--w4-repeat", type=int, default=5, help="cold starts, median reported")
    parser.add_argument(
        "--attach-repeat", type=int, default=5, help="attaching processes, median reported"
    )
    parser.add_argument("--w5-runs", type=int, default=100_000)
    parser.add_argument("--w5-chunk", type=int, default=10_000)
    parser.add_argument(
        "--w5-budget",
        type=float,
        default=150.0,
        help="seconds of filling before W5 stops early (and says so)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per measuring process")
    parser.add_argument("--min-rate", type=float, default=QUICK_MIN_RATE)
    parser.add_argument(
        "--latest",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="copy to bench/results/latest/ (default: only for a full run)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="DIR",
        help="only re-render DIR/results.md and chart.png from DIR/results.json",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.systems, args.workloads = "nbtasks,pool", "w1,w2,attach"
        args.w1_tasks, args.w2_calls, args.attach_repeat = 1000, 100, 3
        args.w1_repeat = max(args.w1_repeat, 3)  # best of 3: a guard, not a measurement
    keys = [k for k in args.systems.split(",") if k]
    if set(keys) - set(BY_KEY):
        parser.error(f"unknown systems: {', '.join(sorted(set(keys) - set(BY_KEY)))}")
    args.system_list = [BY_KEY[k] for k in keys]
    args.workload_list = [w for w in args.workloads.split(",") if w]
    unknown = set(args.workload_list) - set(ALL_WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def log(start: float, text: str) -> None:
    print(f"[{time.perf_counter() - start:6.0f} s] {text}", file=sys.stderr, flush=True)


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def missing_packages(system: System) -> list[str]:
    return [p for p in system.packages if version_of(p) is None]


def nbtasks_commit() -> str:
    """The checkout measured: its commit, "+dirty" when src/ has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "src")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        pass
    return {
        "machine": f"{platform.machine()}, {model or 'unknown CPU'}, {platform.system()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def summarize(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED: " + str(result["error"])
    for key, fmt in (
        ("tasks_per_s", "{:,.0f} tasks/s"),
        ("p50_ms", "p50 {:.2f} ms"),
        ("seconds", "{:.2f} s"),
        ("first_result_s", "{:.3f} s to first result"),
        ("rss_mib_mean", "{:.0f} MiB RSS per worker"),
    ):
        if key in result:
            return fmt.format(result[key])
    return "done"


def run_session_workloads(
    args: argparse.Namespace, env: dict[str, str], home: Path, start: float, results: dict[str, Any]
) -> None:
    """W1, W2, W3, W6 (idle workers): one fresh process per system and workload."""
    sizes = {"w1": args.w1_tasks, "w2": args.w2_calls, "w3": args.w3_tasks, "w6": 0}
    workloads = [w for w in ("w1", "w2", "w3", "w6") if w in args.workload_list]
    for turn, workload in enumerate(workloads):
        rows = results["workloads"].setdefault(workload, {})
        for system in fair_order(args.system_list, turn):
            if workload == "w6" and not system.memory:
                continue
            missing = missing_packages(system)
            if missing:
                rows[system.key] = {"error": f"not installed: {', '.join(missing)}"}
                continue
            cli = ["--workload", workload, "--workers", str(args.workers)]
            cli += ["--n", str(sizes[workload]), "--options", json.dumps(system.options)]
            if workload == "w1":
                cli += ["--repeat", str(args.w1_repeat)]
            cwd = Path(tempfile.mkdtemp(dir=home))
            module = f"bench.systems.{system.module}"
            result = run_module(module, cli, system_env(system, env), cwd, args.timeout)
            result.pop("traceback", None)
            rows[system.key] = result
            if result.get("notes"):
                results["systems"][system.key]["notes"] = result["notes"]
            log(start, f"{workload.upper()} {system.label}: {summarize(result)}")
        if workload == "w3":
            rows["sleep"] = sleep_floor(args.w3_tasks // args.workers, env, args.timeout)
            log(start, f"W3 time.sleep floor: {summarize(rows['sleep'])}")


def system_env(system: System, env: dict[str, str]) -> dict[str, str]:
    """The environment of a system's measuring processes: the --baseline row's checkout
    first on PYTHONPATH (the nbtasks workers it starts inherit it)."""
    return baseline.pythonpath(system.pythonpath, env) if system.pythonpath else env


def fair_order(systems: list[System], turn: int) -> list[System]:
    """The systems in their order, except that the two nbtasks rows (work tree and
    --baseline) swap places every other turn: neither always goes first."""
    keys = [s.key for s in systems]
    if turn % 2 == 0 or "nbtasks" not in keys or BASELINE not in keys:
        return systems
    i, j = keys.index("nbtasks"), keys.index(BASELINE)
    swapped = list(systems)
    swapped[i], swapped[j] = systems[j], systems[i]
    return swapped


SLEEP_FLOOR = """
import json, time
start = time.perf_counter()
for _ in range($n):
    time.sleep(0.01)
print(json.dumps({"seconds": time.perf_counter() - start, "n": $n}))
"""


def sleep_floor(n: int, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """W3's floor on this machine: one process sleeping 10 ms ``n`` times in a row, the
    share of one worker (``time.sleep`` wakes up late by a little every time)."""
    code = string.Template(SLEEP_FLOOR).substitute(n=n)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True,
            timeout=timeout, check=True,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_cold_starts(
    args: argparse.Namespace, env: dict[str, str], home: Path, start: float, results: dict[str, Any]
) -> None:
    """W4: ``python -c`` programs, import to first result, median of --w4-repeat. The two
    nbtasks rows (work tree and --baseline) take turns, one cold start each, fairly."""
    rows = results["workloads"].setdefault("w4", {})
    python = System("python", "`python -c pass`", "", ())
    groups: list[list[tuple[System, str]]] = [[(python, "pass")]]
    pair: list[tuple[System, str]] = []
    for system in args.system_list:
        missing = missing_packages(system)
        if missing:
            rows[system.key] = {"error": f"not installed: {', '.join(missing)}"}
            continue
        try:
            module = importlib.import_module(f"bench.systems.{system.module}")
        except Exception as exc:  # a broken module costs its own row only
            rows[system.key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        program = (system, module.COLD_START.strip() + "\n")
        if system.key in ("nbtasks", BASELINE):
            if not pair:
                groups.append(pair)
            pair.append(program)
        else:
            groups.append([program])
    for group in groups:
        runs: dict[str, list[dict[str, Any]]] = {system.key: [] for system, _ in group}
        for turn in range(args.w4_repeat):
            for system, code in group if turn % 2 == 0 else group[::-1]:
                if runs[system.key] and "error" in runs[system.key][-1]:
                    continue  # failed: no more tries
                cwd = Path(tempfile.mkdtemp(dir=home))
                text = string.Template(code).safe_substitute(values_for(system, args, cwd))
                runs[system.key].append(
                    cold_start(text, system_env(system, env), cwd, args.timeout)
                )
        for system, _ in group:
            rows[system.key] = median_cold_start(runs[system.key])
            log(start, f"W4 {system.label}: {summarize(rows[system.key])}")


def median_cold_start(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if len(ok) < len(runs):
        return runs[-1]
    return {
        "first_result_s": statistics.median(r["first_result_s"] for r in ok),
        "exit_s": statistics.median(r["exit_s"] for r in ok),
        "runs": ok,
    }


def values_for(system: System, args: argparse.Namespace, cwd: Path) -> dict[str, str]:
    values = {"workers": str(args.workers), "tmp": str(cwd)}
    if system.module:
        module = importlib.import_module(f"bench.systems.{system.module}")
        values.update(getattr(module, "cold_start_values", lambda o: {})(system.options))
    return values


def run_attach(
    args: argparse.Namespace, env: dict[str, str], home: Path, start: float, results: dict[str, Any]
) -> None:
    """Attach: a fresh ``python -c`` process's first answer (``runs.list(limit=1)``) from a
    store whose server already runs (in-process engine: a store that no process holds),
    median of --attach-repeat. The nbtasks rows take turns, one process each, fairly."""
    from bench.systems.nbtasks_bench import ATTACH, ATTACH_SETUP

    rows = results["workloads"].setdefault("attach", {})
    systems = [s for s in args.system_list if s.key in ("nbtasks", BASELINE)]
    setups: dict[str, dict[str, Any]] = {}
    for system in systems:
        store = str(Path(tempfile.mkdtemp(dir=home)) / "attach.duckdb")
        code = string.Template(ATTACH_SETUP).substitute(store=store, workers=args.workers)
        setup = cold_start(code, system_env(system, env), home, args.timeout, keep_servers=True)
        setups[system.key] = {**setup, "store": store}
    runs: dict[str, list[dict[str, Any]]] = {system.key: [] for system in systems}
    for turn in range(args.attach_repeat):
        for system in systems if turn % 2 == 0 else systems[::-1]:
            if "error" in setups[system.key]:
                continue
            code = string.Template(ATTACH).substitute(store=setups[system.key]["store"])
            runs[system.key].append(
                cold_start(code, system_env(system, env), home, args.timeout, keep_servers=True)
            )
    end_servers(env)
    for system in systems:
        rows[system.key] = attach_summary(setups[system.key], runs[system.key])
        log(start, f"attach {system.label}: {summarize(rows[system.key])}")


def attach_summary(setup: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of the attaching processes: their whole time to the answer, and its
    parts (python's start, ``import nbtasks``, configure and answer); an error if one
    failed, or reached another server than the one running before it."""
    if "error" in setup:
        return {"error": f"setting up the store: {setup['error']}"}
    server = setup["reported"]["server"]
    for run in runs:
        if "error" in run:
            return run
        if run["reported"]["server"] != server or run["reported"]["runs"] != 1:
            return {"error": f"an attaching process did not reach server {server}: {run}"}
    median = {key: statistics.median(r[key] for r in runs) for key in ("first_result_s", "exit_s")}
    for key in ("import_s", "answer_s"):
        median[key] = statistics.median(r["reported"][key] for r in runs)
    median["python_s"] = statistics.median(
        r["first_result_s"] - r["reported"]["import_s"] - r["reported"]["answer_s"] for r in runs
    )
    return {**median, "server_pid": server, "runs": runs}


def run_store_scale(
    args: argparse.Namespace, env: dict[str, str], home: Path, start: float, results: dict[str, Any]
) -> None:
    """W5: fill a store in one process, reopen it in another."""
    store = home / "w5" / "scale.duckdb"
    store.parent.mkdir()
    log(start, f"W5 filling a store with up to {args.w5_runs:,} runs...")
    cli = [
        "fill",
        "--store",
        str(store),
        "--workers",
        str(args.workers),
        "--runs",
        str(args.w5_runs),
        "--chunk",
        str(args.w5_chunk),
        "--budget",
        str(args.w5_budget),
    ]
    w5 = run_module("bench.store_scale", cli, env, store.parent, args.w5_budget + args.timeout)
    if "error" not in w5:
        w5["reopen"] = run_module(
            "bench.store_scale", ["reopen", "--store", str(store)], env, store.parent, args.timeout
        )
        log(
            start,
            f"W5: {w5['runs']:,} runs, {w5['fill_runs_per_s']:,.0f} runs/s, "
            f"{w5['bytes_per_run']:,.0f} bytes/run, list p50 "
            f"{w5['list']['none']['p50_ms']:.1f} ms",
        )
    else:
        log(start, f"W5: FAILED: {w5['error']}")
    results["w5"] = w5


def run_kernel_memory(
    args: argparse.Namespace, env: dict[str, str], home: Path, start: float, results: dict[str, Any]
) -> None:
    cwd = Path(tempfile.mkdtemp(dir=home))
    kernel = run_module(
        "bench.kernel_memory", ["--workers", str(args.workers)], env, cwd, args.timeout
    )
    results["w6_kernel"] = kernel
    if "error" in kernel:
        log(start, f"W6 nbtasks kernel: FAILED: {kernel['error']}")
    else:
        log(
            start,
            f"W6 nbtasks kernel: +{kernel['import_rss_mib']:.1f} MiB at import, "
            f"+{kernel['engine_rss_mib']:.1f} MiB with the engine",
        )


def write_results(results: dict[str, Any], out: Path, with_chart: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(report.render(results, markdown=True))
    if with_chart:
        try:
            report.chart(results, out / "chart.png")
        except ImportError as exc:  # matplotlib is installed by scripts/bench, not --quick
            print(f"no chart: {exc}", file=sys.stderr)


def add_baseline(args: argparse.Namespace) -> baseline.Checkout:
    """--baseline REF: export and compile REF's nbtasks, compile the work tree's alike, and
    add REF's row right after nbtasks'; both rows' labels say their commit."""
    checkout = baseline.export(args.baseline)
    baseline.check_import(checkout.src)
    baseline.compile_src(REPO / "src")  # as scripts/bench does: both rows start compiled
    ours = f"nbtasks @ {nbtasks_commit()} (work tree)"
    systems = [replace(s, label=ours) if s.key == "nbtasks" else s for s in args.system_list]
    at = next((i + 1 for i, s in enumerate(systems) if s.key == "nbtasks"), 0)
    row = replace(
        BY_KEY["nbtasks"], key=BASELINE, label=checkout.label, pythonpath=str(checkout.src)
    )
    args.system_list = [*systems[:at], row, *systems[at:]]
    return checkout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args.render)
    start = time.perf_counter()
    checkout = None
    if args.baseline:
        try:
            checkout = add_baseline(args)
        except baseline.BaselineError as exc:
            print(f"--baseline {args.baseline}: {exc}", file=sys.stderr)
            return 2
        log(start, f"baseline: {checkout.label}, nbtasks from {checkout.src}")
    now = datetime.now(timezone.utc)
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        log(
            start,
            f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: figures will be noisy",
        )
    dists = ["nbtasks", "duckdb", "dill", "psutil"] + ([] if args.quick else ["matplotlib"])
    dists += [p for s in args.system_list for p in s.packages if p not in dists]
    results: dict[str, Any] = {
        "meta": {
            "timestamp": now.strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "workers": args.workers,
            "nbtasks_commit": nbtasks_commit(),
            "load_avg_start": os.getloadavg(),
            "versions": {"python": platform.python_version()}
            | {d: version_of(d) or "not installed" for d in dists},
            "args": {k: v for k, v in vars(args).items() if k not in ("system_list", "render")},
            **machine_info(),
        },
        "systems": {
            s.key: {"label": s.label, "anchor": s.anchor, "options": s.options}
            for s in args.system_list
        },
        "workloads": {},
    }
    if checkout is not None:
        results["meta"]["baseline"] = {
            "ref": checkout.ref,
            "commit": checkout.commit,
            "short": checkout.short,
        }
        results["systems"][BASELINE]["commit"] = checkout.short
        if "nbtasks" in results["systems"]:
            results["systems"]["nbtasks"]["commit"] = results["meta"]["nbtasks_commit"]
    with tempfile.TemporaryDirectory(prefix="nbtasks-bench-") as tmp:
        home = Path(tmp)
        env = child_env(home)
        run_session_workloads(args, env, home, start, results)
        if "w4" in args.workload_list:
            run_cold_starts(args, env, home, start, results)
        if "attach" in args.workload_list and "nbtasks" in args.systems.split(","):
            run_attach(args, env, home, start, results)
        if "w5" in args.workload_list and "nbtasks" in args.systems.split(","):
            run_store_scale(args, env, home, start, results)
        if "w6" in args.workload_list and "nbtasks" in args.systems.split(","):
            run_kernel_memory(args, env, home, start, results)
    results["meta"]["load_avg_end"] = os.getloadavg()
    results["meta"]["duration_s"] = time.perf_counter() - start
    print()
    print(report.render(results, markdown=False))
    if args.quick:
        return quick_verdict(results, args.min_rate)
    full = is_full_run(args)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / (stamp if full else f"tmp/{stamp}")
    write_results(results, out, with_chart=True)
    print(f"results: {out.relative_to(REPO)}/")
    if args.latest or (args.latest is None and full):
        latest = RESULTS / "latest"
        shutil.rmtree(latest, ignore_errors=True)
        shutil.copytree(out, latest)
        print(f"copied to {latest.relative_to(REPO)}/")
    return 0


def is_full_run(args: argparse.Namespace) -> bool:
    """Every system and workload at the default sizes, no --baseline: a result worth keeping
    as latest."""
    defaults = vars(parse_args([]))
    prefixes = ("w1_", "w2_", "w3_", "w4_", "w5_", "attach_", "workers")
    sizes = [k for k in defaults if k.startswith(prefixes)]
    return (
        not args.baseline
        and set(args.workload_list) == set(ALL_WORKLOADS)
        and len(args.system_list) == len(SYSTEMS)
        and all(getattr(args, k) == defaults[k] for k in sizes)
    )


def render_only(directory: Path) -> int:
    """Re-render results.md and chart.png of a results directory from its results.json."""
    results = json.loads((directory / "results.json").read_text())
    print(report.render(results, markdown=False))
    write_results(results, directory, with_chart=True)
    print(f"rendered {directory}/")
    return 0


def quick_verdict(results: dict[str, Any], min_rate: float) -> int:
    ours = results["workloads"]["w1"].get("nbtasks", {})
    rate = ours.get("tasks_per_s")
    if rate is None:
        print(f"REGRESSION: nbtasks W1 did not finish: {ours.get('error')}")
        return 1
    if rate < min_rate:
        print(f"REGRESSION: nbtasks W1 {rate:,.0f} runs/s is below {min_rate:,.0f}")
        return 1
    print(f"ok: nbtasks W1 {rate:,.0f} runs/s (floor {min_rate:,.0f})")
    return 0
