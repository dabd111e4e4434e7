// Shared by the nbtasks widgets; each widget's module is this file + its own.
const FINAL = new Set(["COMPLETED", "CANCELED", "FAILED", "TIMED_OUT", "CRASHED",
  "INTERRUPTED", "SYSTEM_FAILURE", "EXPIRED"]);
const FINAL_AND_LIVE = ["WAITING_FOR_DEPLOY", "DELAYED", "QUEUED", "EXECUTING", "REATTEMPTING",
  "FROZEN", ...FINAL];

function badge(status) {
  const b = document.createElement("span");
  b.className = `nbt-badge nbt-s-${status}`;
  b.textContent = status;
  b.dataset.status = status;
  return b;
}

function ms(value) {
  if (value === null || value === undefined) return "";
  return value < 1000 ? `${value.toFixed(1)} ms` : `${(value / 1000).toFixed(2)} s`;
}

function text(tag, content, cls) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  node.textContent = content ?? "";
  return node;
}

function renderRun(run, parts) {
  const { head, progress, timelineEl, attemptsEl, timeline } = parts;
  head.replaceChildren(text("span", run.task_id, "nbt-task"), badge(run.status),
    text("span", `attempt ${run.attempt_count}/${run.max_attempts ?? 1}`, "nbt-muted"),
    text("span", run.duration_ms != null ? ms(run.duration_ms) : "", "nbt-muted"));
  if (run.status === "DELAYED" && run.delay_until) {
    head.append(text("span", `until ${new Date(run.delay_until).toLocaleTimeString()}`, "nbt-muted"));
  }
  const p = run.progress;
  progress.style.display = p === null || p === undefined ? "none" : "block";
  progress.firstChild.style.width = `${Math.max(0, Math.min(1, p ?? 0)) * 100}%`;
  timelineEl.replaceChildren(...(timeline || []).map(([status]) => badge(status)));
  const rows = (run.attempts || []).map((a) => {
    const tr = document.createElement("tr");
    tr.append(text("td", `#${a.number}`), text("td", ""), text("td", ms(a.duration_ms)));
    tr.children[1].append(badge(a.status));
    const info = document.createElement("td");
    if (a.error) {
      const d = document.createElement("details");
      d.append(text("summary", `${a.error.type}: ${a.error.message}`));
      d.append(text("pre", a.error.traceback || ""));
      info.append(d);
    } else if (a.exit_code != null || a.signal != null) {
      info.textContent = a.signal != null ? `signal ${a.signal}` : `exit code ${a.exit_code}`;
    }
    if (a.oom) info.append(text("span", " (out of memory)"));
    tr.append(info);
    return tr;
  });
  attemptsEl.replaceChildren(...rows);
  if (run.status === "COMPLETED" && run.output_preview != null) {
    const tr = document.createElement("tr");
    const td = text("td", `output: ${run.output_preview}`);
    td.colSpan = 4;
    tr.append(td);
    attemptsEl.append(tr);
  }
}

