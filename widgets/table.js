// The interactive run table: filter, sort, page, live updates, select to cancel or replay
// (or every run the filter matches, once confirmed), open a run.
const COLUMNS = [["id", "id"], ["created", "created"], ["started", "started"],
  ["finished", "finished"], ["task_id", "task"], ["origin", "origin"], ["status", "status"],
  ["attempt_count", "attempts"], ["duration_ms", "duration"], ["output", "output / error"]];
const SORTABLE = new Set(["created", "task_id", "origin", "status", "attempt_count",
  "duration_ms"]);
const TYPING_MS = 300; // a text filter applies this long after the last key, or on Enter

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
  const boxes = {};
  for (const [name, hint] of [["task", "task contains"], ["tag", "tag contains"],
    ["id", "id starts with"]]) {
    boxes[name] = Object.assign(document.createElement("input"),
      { placeholder: hint, className: `nbt-filter-${name}` });
  }
  const prev = text("button", "◀"); const next = text("button", "▶");
  prev.className = "nbt-page-prev"; next.className = "nbt-page-next";
  const pageLabel = text("span", "", "nbt-muted nbt-page");
  const totalLabel = text("span", "", "nbt-total");
  filters.append(status, boxes.task, boxes.tag, boxes.id, totalLabel, prev, pageLabel, next);
  const actions = text("div", "", "nbt-filters");
  const cancel = text("button", "Cancel selected", "nbt-cancel-selected");
  const replay = text("button", "Replay selected", "nbt-replay-selected");
  const bulkCancel = text("button", "Cancel all matching…", "nbt-bulk-cancel");
  const bulkReplay = text("button", "Replay all matching…", "nbt-bulk-replay");
  actions.append(cancel, replay, bulkCancel, bulkReplay);
  const confirmBar = text("div", "", "nbt-confirm");
  const table = document.createElement("table");
  table.className = "nbt-table";
  const thead = document.createElement("thead");
  const tbody = document.createElement("tbody");
  table.append(thead, tbody);
  const detail = document.createElement("div");
  const feedback = text("div", "", "nbt-feedback");
  root.append(filters, actions, confirmBar, table, detail, feedback);
  el.append(root);
  const selected = new Set();
  let confirming = null; // {op, filters, count} while the confirmation shows

  const current = () => ({ status: status.value, task: boxes.task.value.trim(),
    tag: boxes.tag.value.trim(), id: boxes.id.value.trim() });
  const edited = new Set(); // boxes changed since the filter was last sent: kept as typed
  const sendFilter = () => {
    edited.clear();
    model.send({ action: "filter", ...current() });
  };
  let typing = null;
  status.addEventListener("change", sendFilter);
  for (const box of Object.values(boxes)) {
    box.addEventListener("input", () => {
      edited.add(box);
      clearTimeout(typing);
      typing = setTimeout(sendFilter, TYPING_MS);
    });
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        clearTimeout(typing);
        sendFilter();
      }
    });
  }
  prev.addEventListener("click", () => model.send({ action: "page", delta: -1 }));
  next.addEventListener("click", () => model.send({ action: "page", delta: 1 }));
  const act = (action) => {
    model.send({ action, ids: [...selected] });
    selected.clear(); // acted on: nothing stays ticked
    update();
  };
  cancel.addEventListener("click", () => act("cancel"));
  replay.addEventListener("click", () => act("replay"));
  // A bulk action asks about the filter in the boxes: one typed but not yet applied is
  // applied first, and the question waits for its count.
  let asking = null; // the op whose question waits for the typed filter to apply
  const applied = () => {
    const f = model.get("filters") || {};
    return Object.entries(current()).every(([k, v]) => (f[k] || "") === v);
  };
  const ask = (op) => {
    confirming = null;
    asking = op;
    if (applied()) update();
    else {
      clearTimeout(typing);
      sendFilter();
    }
  };
  bulkCancel.addEventListener("click", () => ask("cancel"));
  bulkReplay.addEventListener("click", () => ask("replay"));

  const update = () => {
    const sort = model.get("sort") || {};
    const head = document.createElement("tr");
    head.append(text("th", ""));
    for (const [key, label] of COLUMNS) {
      const th = text("th", label + (sort.col === key ? (sort.desc ? " ▼" : " ▲") : ""));
      th.dataset.col = key;
      if (SORTABLE.has(key)) th.addEventListener("click", () => model.send({ action: "sort", col: key }));
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
      tr.dataset.id = r.id;
      if (r.id === opened) tr.className = "nbt-open";
      const box = Object.assign(document.createElement("input"), { type: "checkbox" });
      box.checked = selected.has(r.id);
      box.addEventListener("change", () => {
        box.checked ? selected.add(r.id) : selected.delete(r.id);
        cancel.disabled = replay.disabled = selected.size === 0;
      });
      const cb = document.createElement("td");
      cb.append(box);
      const idCell = document.createElement("td");
      idCell.append(idLabel(r.id));
      const st = document.createElement("td");
      st.append(badge(r.status));
      // started and finished as a time of day (the date when hovered): rows stay short
      const started = text("td", clock(r.started_at), "nbt-date");
      const finished = text("td", clock(r.finished_at), "nbt-date");
      started.title = dateTime(r.started_at); finished.title = dateTime(r.finished_at);
      tr.append(cb, idCell, text("td", dateTime(r.created_at), "nbt-date"), started, finished,
        text("td", r.task_id), text("td", r.origin ?? "", "nbt-origin"), st,
        text("td", String(r.attempt_count)), text("td", ms(r.duration_ms)),
        text("td", r.error ? `${r.error}` : (r.output_preview ?? "")));
      for (const cell of [...tr.children].slice(2)) {
        cell.addEventListener("click", () => model.send({ action: "open", id: r.id }));
        cell.style.cursor = "pointer";
      }
      return tr;
    }));
    cancel.disabled = replay.disabled = selected.size === 0;
    const f = model.get("filters") || {};
    if (document.activeElement !== status) status.value = f.status || "";
    for (const [name, box] of Object.entries(boxes)) {
      if (document.activeElement !== box && !edited.has(box)) box.value = f[name] || "";
    }
    const total = model.get("total");
    totalLabel.textContent = `${total} run${total === 1 ? "" : "s"}`;
    totalLabel.dataset.total = String(total);
    pageLabel.textContent = `page ${model.get("page") + 1}`;
    prev.disabled = model.get("page") === 0;
    next.disabled = !model.get("has_next");
    bulkCancel.disabled = !model.get("unfinished");
    bulkReplay.disabled = !total;
    if (asking && applied()) {
      const count = asking === "cancel" ? model.get("unfinished") : total;
      confirming = { op: asking, filters: { ...f }, count };
      asking = null;
    }
    if (confirming) {
      const { op, count } = confirming;
      const what = op === "cancel" ? `Cancel the ${count} unfinished` : `Replay the ${count}`;
      const yes = text("button", `${op === "cancel" ? "Cancel" : "Replay"} ${count} run${count === 1 ? "" : "s"}`,
        "nbt-confirm-yes");
      const no = text("button", "Back", "nbt-confirm-no");
      yes.addEventListener("click", () => {
        model.send({ action: "bulk", op, filters: confirming.filters });
        confirming = null;
        update();
      });
      no.addEventListener("click", () => { confirming = null; update(); });
      const shown = Object.entries(confirming.filters).filter(([, v]) => v)
        .map(([k, v]) => `${k} ${k === "id" ? "starts with" : k === "status" ? "is" : "contains"} "${v}"`);
      confirmBar.replaceChildren(text("span", `${what} run${count === 1 ? "" : "s"} matching `
        + `${shown.length ? shown.join(", ") : "no filter (every run)"}?`), yes, no);
      confirmBar.style.display = "flex";
    } else {
      confirmBar.replaceChildren();
      confirmBar.style.display = "none";
    }
    renderDetail(detail, model.get("detail"));
    feedback.textContent = feedbackText(model.get("feedback"));
  };
  for (const name of ["rows", "sort", "page", "has_next", "detail", "filters", "feedback",
    "total", "unfinished"]) {
    model.on(`change:${name}`, update);
  }
  update();
}

export default { render };
