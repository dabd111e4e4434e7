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

// Every time the widgets show is written by these two, in the browser's locale.
function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

function dateTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// Feedback from the kernel names times as {time:ISO}: written here like every other time.
function feedbackText(s) {
  return (s || "").replace(/\{time:([^}]*)\}/g, (_, iso) => clock(iso));
}

function text(tag, content, cls) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  node.textContent = content ?? "";
  return node;
}

async function copyText(value) {
  try {
    await navigator.clipboard.writeText(value);
    return true;
  } catch (e) { // no clipboard API (an insecure page, a denied permission): the old way
    const area = Object.assign(document.createElement("textarea"), { value });
    area.style.position = "fixed"; area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

// A run id, with a button that copies it.
function idLabel(id) {
  const box = text("span", "", "nbt-id");
  const code = text("code", id);
  const button = text("button", "copy", "nbt-copy");
  button.title = "copy the run id";
  button.dataset.copy = id;
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    const ok = await copyText(id);
    button.textContent = ok ? "copied" : "copy failed";
    setTimeout(() => { button.textContent = "copy"; }, 1500);
  });
  box.append(code, button);
  return box;
}

// A display(...) bundle of an attempt: an image, HTML in a sandbox (no script), or text.
function renderDisplay(bundle) {
  if (bundle["image/png"]) {
    return Object.assign(document.createElement("img"),
      { src: `data:image/png;base64,${bundle["image/png"]}`, className: "nbt-display" });
  }
  if (bundle["text/html"]) {
    const frame = document.createElement("iframe");
    frame.className = "nbt-display";
    frame.setAttribute("sandbox", "allow-same-origin");
    frame.srcdoc = [].concat(bundle["text/html"]).join("");
    frame.addEventListener("load", () => {
      const body = frame.contentDocument && frame.contentDocument.body;
      if (body) frame.style.height = `${Math.min(400, body.scrollHeight + 16)}px`;
    });
    return frame;
  }
  return text("pre", [].concat(bundle["text/plain"] ?? "").join(""), "nbt-display");
}

function fullRow(node, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  const td = document.createElement("td");
  td.colSpan = 4;
  td.append(node);
  tr.append(td);
  return tr;
}

// The head, progress, timeline and attempts of a run. ``logsOf(attempt, i)``: whether the
// attempt's logs go in its row (those the run state carries: finished attempts).
function renderRun(run, parts) {
  const { head, progress, timelineEl, attemptsEl, timeline } = parts;
  const logsOf = parts.logsOf || (() => true);
  head.replaceChildren(text("span", run.task_id, "nbt-task"), badge(run.status));
  if (run.id) head.append(idLabel(run.id));
  head.append(text("span", `attempt ${run.attempt_count}/${run.max_attempts ?? 1}`, "nbt-muted"));
  const elapsed = text("span", "", "nbt-muted nbt-elapsed");
  const attempts = run.attempts || [];
  const last = attempts[attempts.length - 1];
  if (run.status === "EXECUTING" && last && last.started_at && run.now) {
    // the kernel's clock may differ from the browser's: count from its "now"
    const skew = Date.now() - Date.parse(run.now);
    elapsed.dataset.since = String(Date.parse(last.started_at) + skew);
  } else {
    elapsed.textContent = run.duration_ms != null ? ms(run.duration_ms) : "";
  }
  head.append(elapsed);
  if (run.status === "DELAYED" && run.delay_until) {
    head.append(text("span", `until ${clock(run.delay_until)}`, "nbt-muted nbt-until"));
  }
  const p = run.progress;
  const hasProgress = p !== null && p !== undefined;
  progress.style.display = hasProgress ? "block" : "none";
  progress.firstChild.style.width = `${Math.max(0, Math.min(1, p ?? 0)) * 100}%`;
  if (hasProgress) {
    head.append(text("span", `${Math.round(Math.max(0, Math.min(1, p)) * 100)}%`, "nbt-percent"));
  }
  tick(head);
  timelineEl.replaceChildren(...(timeline || []).map(([status]) => badge(status)));
  const rows = [];
  if (run.payload_preview != null) {
    rows.push(fullRow(text("span", `payload: ${run.payload_preview}`), "nbt-payload"));
  }
  attempts.forEach((a, i) => {
    const tr = document.createElement("tr");
    tr.className = "nbt-attempt";
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
    rows.push(tr);
    const out = (a.stdout || "") + (a.stderr ? `\n[stderr]\n${a.stderr}` : "");
    if (out && logsOf(a, i)) {
      const d = document.createElement("details");
      d.className = "nbt-attempt-logs";
      d.append(text("summary", `logs of attempt #${a.number}`), text("pre", out));
      rows.push(fullRow(d));
    }
    if ((a.displays || []).length) {
      const box = text("div", "", "nbt-displays");
      box.append(...a.displays.map(renderDisplay));
      rows.push(fullRow(box));
    }
  });
  if (run.status === "COMPLETED" && run.output_preview != null) {
    rows.push(fullRow(text("span", `output: ${run.output_preview}`), "nbt-output"));
  }
  attemptsEl.replaceChildren(...rows);
}

// Elapsed times of executing runs, counted on by a timer.
function tick(root) {
  for (const el of root.querySelectorAll(".nbt-elapsed[data-since]")) {
    el.textContent = `running ${ms(Math.max(0, Date.now() - Number(el.dataset.since)))}`;
  }
}

// A run shown inside another view (a table row opened, a batch item, a replay).
function renderDetail(container, run) {
  if (!run || !run.id) {
    container.replaceChildren();
    return;
  }
  const h = text("div", "", "nbt-head");
  const p = text("div", "", "nbt-progress");
  p.append(document.createElement("div"));
  const tb = document.createElement("tbody");
  const tbl = text("table", "", "nbt-attempts");
  tbl.append(tb);
  renderRun(run, { head: h, progress: p, timelineEl: document.createElement("div"),
    attemptsEl: tb, timeline: [] });
  const box = text("div", "", "nbt nbt-run nbt-detail");
  box.dataset.detailStatus = run.status;
  // where it was triggered from: in another view than its own, worth saying
  if (run.origin) h.append(text("span", `from ${run.origin}`, "nbt-muted nbt-origin"));
  box.append(h, p, tbl);
  container.replaceChildren(box);
}

