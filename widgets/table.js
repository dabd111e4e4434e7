// The interactive run table: filter, sort, page, live updates, select to cancel or replay,
// open a run.
const COLUMNS = [["created", "created"], ["task_id", "task"], ["status", "status"],
  ["attempt_count", "attempts"], ["duration_ms", "duration"], ["output", "output / error"]];

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "nbt nbt-table-widget";
  const filters = document.createElement("div");
  filters.className = "nbt-filters";
  const status = document.createElement("select");
  status.className = "nbt-filter-status";
  for (const s of ["", ...FINAL_AND_LIVE]) {
    const o = document.createElement("option");
    o.value = s;
    o.textContent = s || "any status";
    status.append(o);
  }
  const task = Object.assign(document.createElement("input"), { placeholder: "task" });
  const tag = Object.assign(document.createElement("input"), { placeholder: "tag" });
  task.className = "nbt-filter-task"; tag.className = "nbt-filter-tag";
  const prev = text("button", "◀"); const next = text("button", "▶");
  const cancel = text("button", "Cancel selected"); const replay = text("button", "Replay selected");
  cancel.className = "nbt-cancel-selected"; replay.className = "nbt-replay-selected";
  const pageLabel = text("span", "", "nbt-muted");
  filters.append(status, task, tag, prev, pageLabel, next, cancel, replay);
  const table = document.createElement("table");
  table.className = "nbt-table";
  const thead = document.createElement("thead");
  const tbody = document.createElement("tbody");
  table.append(thead, tbody);
  const detail = document.createElement("div");
  const feedback = text("div", "", "nbt-feedback");
  root.append(filters, table, detail, feedback);
  el.append(root);
  const selected = new Set();

  const sendFilter = () => model.send({ action: "filter", status: status.value,
    task: task.value.trim(), tag: tag.value.trim() });
  status.addEventListener("change", sendFilter);
  task.addEventListener("change", sendFilter);
  tag.addEventListener("change", sendFilter);
  prev.addEventListener("click", () => model.send({ action: "page", delta: -1 }));
  next.addEventListener("click", () => model.send({ action: "page", delta: 1 }));
  cancel.addEventListener("click", () => model.send({ action: "cancel", ids: [...selected] }));
  replay.addEventListener("click", () => model.send({ action: "replay", ids: [...selected] }));

  const update = () => {
    const sort = model.get("sort") || {};
    const head = document.createElement("tr");
    head.append(text("th", ""));
    for (const [key, label] of COLUMNS) {
      const th = text("th", label + (sort.col === key ? (sort.desc ? " ▼" : " ▲") : ""));
      th.dataset.col = key;
      if (key !== "output") th.addEventListener("click", () => model.send({ action: "sort", col: key }));
      head.append(th);
    }
    thead.replaceChildren(head);
    const rows = model.get("rows") || [];
    const ids = new Set(rows.map((r) => r.id));
    for (const id of [...selected]) if (!ids.has(id)) selected.delete(id);
    const opened = (model.get("detail") || {}).id;
    tbody.replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.status = r.status;
      if (r.id === opened) tr.className = "nbt-open";
      const box = Object.assign(document.createElement("input"), { type: "checkbox" });
      box.checked = selected.has(r.id);
      box.addEventListener("change", () => {
        box.checked ? selected.add(r.id) : selected.delete(r.id);
        cancel.disabled = replay.disabled = selected.size === 0;
      });
      const cb = document.createElement("td");
      cb.append(box);
      const st = document.createElement("td");
      st.append(badge(r.status));
      tr.append(cb, text("td", new Date(r.created_at).toLocaleTimeString()), text("td", r.task_id), st,
        text("td", String(r.attempt_count)), text("td", ms(r.duration_ms)),
        text("td", r.error ? `${r.error}` : (r.output_preview ?? "")));
      for (const cell of [...tr.children].slice(1)) {
        cell.addEventListener("click", () => model.send({ action: "open", id: r.id }));
        cell.style.cursor = "pointer";
      }
      return tr;
    }));
    cancel.disabled = replay.disabled = selected.size === 0;
    const f = model.get("filters") || {};
    if (document.activeElement !== status) status.value = f.status || "";
    pageLabel.textContent = `page ${model.get("page") + 1}`;
    prev.disabled = model.get("page") === 0;
    next.disabled = !model.get("has_next");
    const d = model.get("detail");
    if (d && d.id) {
      const h = document.createElement("div"); h.className = "nbt-head";
      const p = document.createElement("div"); p.className = "nbt-progress";
      p.append(document.createElement("div"));
      const t = document.createElement("div"); t.className = "nbt-timeline";
      const tb = document.createElement("tbody");
      const tbl = document.createElement("table"); tbl.className = "nbt-attempts"; tbl.append(tb);
      renderRun(d, { head: h, progress: p, timelineEl: t, attemptsEl: tb, timeline: [] });
      const box = document.createElement("div");
      box.className = "nbt nbt-run nbt-detail";
      box.append(h, p, tbl);
      detail.replaceChildren(box);
    } else {
      detail.replaceChildren();
    }
    feedback.textContent = model.get("feedback") || "";
  };
  for (const name of ["rows", "sort", "page", "has_next", "detail", "filters", "feedback"]) {
    model.on(`change:${name}`, update);
  }
  update();
}

export default { render };
