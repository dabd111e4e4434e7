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
  const logsPre = text("pre", "");
  logs.append(text("summary", "logs"), logsPre);
  const feedback = text("div", "", "nbt-feedback");
  root.append(head, progress, timelineEl, table, logs, feedback);
  el.append(root);

  cancel.addEventListener("click", () => model.send({ action: "cancel" }));
  replay.addEventListener("click", () => model.send({ action: "replay" }));
  reschedule.addEventListener("click", () => model.send({ action: "reschedule", delay: "1m" }));

  const update = () => {
    const run = model.get("run") || {};
    renderRun(run, { head, progress, timelineEl, attemptsEl, timeline: model.get("timeline") });
    head.append(buttons);
    root.dataset.status = run.status || "";
    cancel.disabled = FINAL.has(run.status);
    reschedule.disabled = run.status !== "DELAYED";
    const l = model.get("logs") || "";
    logsPre.textContent = l;
    logs.style.display = l ? "block" : "none";
    if (!FINAL.has(run.status) && l) logs.open = true;
    feedback.textContent = model.get("feedback") || "";
  };
  for (const name of ["run", "timeline", "logs", "feedback"]) model.on(`change:${name}`, update);
  update();
}

export default { render };
