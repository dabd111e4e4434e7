// The live widget of one nbtasks run: status, timeline, attempts, logs, progress, buttons.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "nbt nbt-run";
  const head = document.createElement("div");
  head.className = "nbt-head";
  const buttons = document.createElement("div");
  buttons.className = "nbt-buttons";
  const cancel = text("button", "Cancel");
  const replay = text("button", "Replay");
  const reschedule = text("button", "Reschedule +1m");
  reschedule.title = "start one minute later than it is due now";
  cancel.className = "nbt-cancel"; replay.className = "nbt-replay";
  reschedule.className = "nbt-reschedule";
  buttons.append(cancel, replay, reschedule);
  const progress = document.createElement("div");
  progress.className = "nbt-progress";
  progress.append(document.createElement("div"));
  const timelineEl = document.createElement("div");
  timelineEl.className = "nbt-timeline";
  const table = document.createElement("table");
  table.className = "nbt-attempts";
  const attemptsEl = document.createElement("tbody");
  table.append(attemptsEl);
  const logs = document.createElement("details");
  logs.className = "nbt-logs";
  const logsPre = text("pre", "");
  logs.append(text("summary", "logs"), logsPre);
  const replays = text("div", "", "nbt-replays");
  const detail = document.createElement("div");
  const feedback = text("div", "", "nbt-feedback");
  root.append(head, progress, timelineEl, table, logs, feedback, replays, detail);
  el.append(root);

  cancel.addEventListener("click", () => model.send({ action: "cancel" }));
  replay.addEventListener("click", () => model.send({ action: "replay" }));
  reschedule.addEventListener("click", () => model.send({ action: "reschedule", by_s: 60 }));

  const update = () => {
    const run = model.get("run") || {};
    const n = (run.attempts || []).length;
    // the last attempt's output is in "logs" below; earlier ones in their rows
    renderRun(run, { head, progress, timelineEl, attemptsEl, timeline: model.get("timeline"),
      logsOf: (a, i) => i < n - 1 });
    head.append(buttons);
    root.dataset.status = run.status || "";
    cancel.disabled = FINAL.has(run.status);
    reschedule.disabled = run.status !== "DELAYED";
    const l = model.get("logs") || "";
    logsPre.textContent = l;
    logs.style.display = l ? "block" : "none";
    if (!FINAL.has(run.status) && l) logs.open = true;
    feedback.textContent = feedbackText(model.get("feedback"));
    const ids = model.get("replays") || [];
    const opened = (model.get("detail") || {}).id;
    replays.replaceChildren(...(ids.length ? [text("span", "replays:", "nbt-muted")] : []),
      ...ids.map((id) => {
        const b = text("button", `open ${id}`, "nbt-open-replay");
        b.dataset.id = id;
        if (id === opened) b.classList.add("nbt-active");
        b.addEventListener("click", () => model.send({ action: "open", id }));
        return b;
      }));
    renderDetail(detail, model.get("detail"));
  };
  for (const name of ["run", "timeline", "logs", "feedback", "replays", "detail"]) {
    model.on(`change:${name}`, update);
  }
  update();
  const timer = setInterval(() => tick(root), 250);
  return () => clearInterval(timer);
}

export default { render };
