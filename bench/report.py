"""The results as tables (terminal and Markdown) and a chart (one panel per workload)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.systems import SYSTEMS

Figure = Callable[[dict[str, Any]], float | None]


def _get(key: str) -> Figure:
    return lambda row: row.get(key)


def _ms(key: str) -> Figure:
    return lambda row: None if row.get(key) is None else row[key] * 1000


# (workload, column title, figure, unit format, higher is better)
COLUMNS: list[tuple[str, str, Figure, str, bool]] = [
    ("w1", "W1 tasks/s", _get("tasks_per_s"), "{:,.0f}", True),
    ("w2", "W2 p50 ms", _get("p50_ms"), "{:.2f}", False),
    ("w2", "W2 p95 ms", _get("p95_ms"), "{:.2f}", False),
    ("w3", "W3 s", _get("seconds"), "{:.2f}", False),
    ("w4", "W4 s", _get("first_result_s"), "{:.2f}", False),
    ("w6", "W6 worker RSS MiB", _get("rss_mib_mean"), "{:.0f}", False),
    ("attach", "attach ms", _ms("first_result_s"), "{:.0f}", False),
    ("attach", "attach after import ms", _ms("answer_s"), "{:.1f}", False),
]


ORDER = {s.key: i for i, s in enumerate(SYSTEMS)}


def system_keys(results: dict[str, Any]) -> list[str]:
    """The rows in the order of SYSTEMS; one not there (--baseline's) right after nbtasks."""
    beside = ORDER.get("nbtasks", -1) + 0.5
    return sorted(results["systems"], key=lambda key: ORDER.get(key, beside))


def _figure(results: dict[str, Any], workload: str, key: str, fig: Figure) -> float | None:
    row = results["workloads"].get(workload, {}).get(key)
    if not row or "error" in row:
        return None
    return fig(row)


def _error(results: dict[str, Any], workload: str, key: str) -> str | None:
    row = results["workloads"].get(workload, {}).get(key)
    return str(row["error"]) if row and "error" in row else None


def main_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows ("value xratio" cells; ratio = system / nbtasks) and error notes."""
    keys = system_keys(results)
    columns = [c for c in COLUMNS if c[0] in results["workloads"]]
    header = ["system"] + [f"{title} {'↑' if up else '↓'}" for _, title, _, _, up in columns]
    rows, errors = [], []
    for key in keys:
        cells = [results["systems"][key]["label"]]
        for workload, title, fig, fmt, _ in columns:
            value = _figure(results, workload, key, fig)
            ours = _figure(results, workload, "nbtasks", fig)
            error = _error(results, workload, key)
            if value is None:
                cells.append("failed" if error else "—")
                if error:
                    errors.append(f"{results['systems'][key]['label']}, {title}: {error}")
            elif key == "nbtasks" or not ours:
                cells.append(fmt.format(value))
            else:
                cells.append(f"{fmt.format(value)} x{value / ours:.2g}")
        rows.append(cells)
    references = (
        ("w3", "sleep", "seconds", "`time.sleep(0.01)`, W3 tasks per worker, in a row (reference)"),
        ("w4", "python", "first_result_s", "`python -c pass` (reference)"),
    )
    for workload, key, fig, label in references:
        reference = results["workloads"].get(workload, {}).get(key) or {}
        if fig in reference:
            value = f"{reference[fig]:.2f}"
            rows.append([label] + [value if c[0] == workload else "" for c in columns])
    return header, rows, errors


def w5_rows(w5: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "runs in the store",
            f"{w5['runs']:,}" + (" (time budget hit)" if w5["truncated"] else ""),
        ],
        ["fill rate, runs/s", f"{w5['fill_runs_per_s']:,.0f}"],
        ["fill rate per chunk, runs/s", ", ".join(f"{r:,.0f}" for r in w5["chunk_runs_per_s"])],
    ]
    for name, lat in w5["list"].items():
        rows.append(
            [f"runs.list({name}) p50 / p95 ms", f"{lat['p50_ms']:.1f} / {lat['p95_ms']:.1f}"]
        )
    ret = w5["retrieve"]
    rows.append(["runs.retrieve p50 / p95 ms", f"{ret['p50_ms']:.1f} / {ret['p95_ms']:.1f}"])
    rows.append(["store file, bytes/run", f"{w5['bytes_per_run']:,.0f}"])
    rows.append(["store file, MiB", f"{w5['store_bytes'] / 2**20:,.1f}"])
    if "reopen" in w5:
        reopen = w5["reopen"]
        if "error" in reopen:
            rows.append(["reopen: first runs.list()", f"failed: {reopen['error']}"])
        else:
            rows.append(["reopen: first runs.list() s", f"{reopen['first_list_s']:.3f}"])
            rows.append(["reopen: second runs.list() s", f"{reopen['second_list_s']:.4f}"])
    return rows


def attach_rows(results: dict[str, Any]) -> list[list[str]]:
    """Where an attaching process's time goes, per nbtasks row (medians, ms)."""
    rows = []
    for key in system_keys(results):
        row = results["workloads"]["attach"].get(key)
        if row and "error" not in row:
            parts = (row["first_result_s"], row["python_s"], row["import_s"], row["answer_s"])
            label = results["systems"][key]["label"]
            server = str(row["server_pid"] or "none (in-process engine)")
            rows.append([label, *(f"{v * 1000:.1f}" for v in parts), server])
    return rows


def kernel_rows(kernel: dict[str, Any]) -> list[list[str]]:
    rows = [
        ["kernel RSS added by `import nbtasks`, MiB", f"{kernel['import_rss_mib']:.1f}"],
        ["kernel RSS added by the engine (first trigger), MiB", f"{kernel['engine_rss_mib']:.1f}"],
        ["kernel USS added by the engine, MiB", f"{kernel['engine_uss_mib']:.1f}"],
    ]
    workers = kernel.get("workers")
    if workers:
        rows.append(
            [
                "idle worker RSS / USS, MiB each",
                f"{workers['rss_mib_mean']:.1f} / {workers['uss_mib_mean']:.1f}",
            ]
        )
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict[str, Any], markdown: bool) -> str:
    table = markdown_table if markdown else text_table
    meta = results["meta"]
    out = []
    if markdown:
        out.append(f"# nbtasks benchmark, {meta['timestamp']}\n")
    out.append(
        f"{meta['workers']} workers; Python {meta['python']}; {meta['cpu_count']} CPUs; "
        f"{meta['machine']}. Cells are `value xratio`, ratio = system ÷ nbtasks "
        f"(↑ higher is better, ↓ lower is better)."
    )
    if "load_avg_start" in meta:
        start, end = meta["load_avg_start"][0], meta.get("load_avg_end", [float("nan")])[0]
        out.append(f"Load average (1 min) at the start {start:.2f}, at the end {end:.2f}.")
    if "baseline" in meta:
        base = meta["baseline"]
        out.append(
            f"Two commits of nbtasks in one run: the work tree at "
            f"{meta.get('nbtasks_commit', '?')} and the baseline, {base['ref']} = "
            f"{base['commit']}; the baseline's ratios are baseline ÷ work tree (on a ↓ "
            f"column, above 1: the work tree is faster)."
        )
    header, rows, errors = main_rows(results)
    out += ["", table(header, rows)]
    if errors:
        out += ["", "Failed:"] + [f"- {e}" for e in errors]
    attach = attach_rows(results) if "attach" in results["workloads"] else []
    if attach:
        out += [
            "",
            "Attach, where a fresh process's time goes (medians, ms; the server it reached):",
            "",
            table(
                ["system", "to the answer", "python start", "import nbtasks",
                 "configure + answer", "server pid"],
                attach,
            ),
        ]  # fmt: skip
    if results.get("w5"):
        out += [
            "",
            "W5, nbtasks store at scale:",
            "",
            table(["figure", "value"], w5_rows(results["w5"])),
        ]
    if results.get("w6_kernel") and "error" not in results["w6_kernel"]:
        out += [
            "",
            "W6, nbtasks in the kernel:",
            "",
            table(["figure", "value"], kernel_rows(results["w6_kernel"])),
        ]
    elif results.get("w6_kernel"):
        out += ["", f"W6 kernel memory failed: {results['w6_kernel']['error']}"]
    notes = [
        f"- {s['label']}: " + "; ".join(f"{k} {v}" for k, v in s["notes"].items())
        for s in results["systems"].values()
        if s.get("notes")
    ]
    if notes:
        out += ["", "Set-up of each system:", *notes]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    commits = f"nbtasks at commit {meta.get('nbtasks_commit', '?')}"
    if "baseline" in meta:
        commits += f"; the baseline at {meta['baseline']['short']}"
    out += ["", f"Versions: {versions} ({commits})."]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Panel:
    workload: str
    title: str
    series: tuple[tuple[str, Figure], ...]  # (legend label, figure) per bar of a system
    log: bool = False  # log scale: values spanning decades
    ideal: str | None = None  # the figure drawn as a dashed "ideal" line


PANELS = (
    Panel("w1", "W1: no-op tasks/s (higher is better)", (("", _get("tasks_per_s")),), log=True),
    Panel("w2", "W2: submit-and-wait latency, ms",
          (("p50", _get("p50_ms")), ("p95", _get("p95_ms"))), log=True),
    Panel("w3", "W3: {w3_tasks} x 10 ms sleeps, s", (("", _get("seconds")),), log=True,
          ideal="ideal_s"),
    Panel("w4", "W4: cold start to first result, s", (("", _get("first_result_s")),), log=True),
    Panel("w6", "W6: idle worker memory, MiB each",
          (("RSS", _get("rss_mib_mean")), ("USS", _get("uss_mib_mean")))),
    Panel("attach", "Attach: a fresh process's first answer from a running server, ms",
          (("to the answer", _ms("first_result_s")), ("after import", _ms("answer_s"))),
          log=True),
)  # fmt: skip


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def sizes(results: dict[str, Any]) -> dict[str, Any]:
    return {"w3_tasks": results["meta"]["args"].get("w3_tasks", 200)}


def chart(results: dict[str, Any], path: Path) -> None:
    """One panel per workload, horizontal bars; W5 (nbtasks only) in the last panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    keys = system_keys(results)
    labels = [results["systems"][k]["label"] for k in keys]
    fig, axes = plt.subplots(2, 4, figsize=(22, 10))
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        ax.set_title(panel.title.format(**sizes(results)), fontsize=10)
        if panel.workload not in results["workloads"]:
            ax.set_axis_off()
            continue
        height = 0.8 / len(panel.series)
        for i, (name, figure) in enumerate(panel.series):
            values = [_figure(results, panel.workload, k, figure) or 0.0 for k in keys]
            ys = [y + i * height for y in range(len(keys))]
            bars = ax.barh(ys, values, height=height, label=name or None)
            texts = [number(v) if v else "n/a" for v in values]
            ax.bar_label(bars, labels=texts, fontsize=7, padding=2)
        ax.set_yticks([y + height * (len(panel.series) - 1) / 2 for y in range(len(keys))], labels)
        ax.invert_yaxis()
        if panel.log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.10g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.15)
        rows = results["workloads"][panel.workload]
        line, label = rows.get("python", {}).get("first_result_s"), "python -c pass"
        if panel.ideal:
            line = next((r[panel.ideal] for r in rows.values() if panel.ideal in r), None)
            label = "ideal"
        if line is not None:
            ax.axvline(line, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f" {label}", (line, 0), xycoords=("data", "axes fraction"), fontsize=7)
        if len(panel.series) > 1:
            ax.legend(fontsize=8)
    w5_panel(axes.flat[len(PANELS)], results.get("w5"))
    for ax in axes.flat[len(PANELS) + 1 :]:
        ax.set_axis_off()
    meta = results["meta"]
    fig.suptitle(
        f"nbtasks benchmark: {meta['workers']} workers, {meta['cpu_count']} CPUs, "
        f"Python {meta['python']}, {meta['timestamp']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def w5_panel(ax: Any, w5: dict[str, Any] | None) -> None:
    if not w5 or "list" not in w5:
        ax.set_axis_off()
        return
    names = [f"list({k})" for k in w5["list"]] + ["retrieve"]
    values = [v["p50_ms"] for v in w5["list"].values()] + [w5["retrieve"]["p50_ms"]]
    bars = ax.barh(range(len(names)), values, color="tab:green")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(
        f"W5: nbtasks p50 ms, {w5['runs']:,} runs, {w5['bytes_per_run']:,.0f} B/run",
        fontsize=10,
    )
