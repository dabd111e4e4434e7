// One compact widget for a batch of runs: counts per status, progress, drill-down.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "nbt nbt-batch";
  const head = document.createElement("div");
  head.className = "nbt-head";
  const counts = document.createElement("div");
  counts.className = "nbt-counts";
  const progress = document.createElement("div");
  progress.className = "nbt-progress";
  progress.append(document.createElement("div"));
  const grid = document.createElement("div");
  grid.className = "nbt-grid";
  const detail = document.createElement("div");
  const cancel = document.createElement("button");
  cancel.textContent = "Cancel all";
  cancel.className = "nbt-cancel";
  cancel.addEventListener("click", () => model.send({ action: "cancel_all" }));
  const feedback = document.createElement("div");
  feedback.className = "nbt-feedback";
  root.append(head, progress, counts, grid, detail, feedback);
  el.append(root);

  const update = () => {
    const total = model.get("total");
    const c = model.get("counts") || {};
    const done = Object.entries(c).filter(([s]) => FINAL.has(s)).reduce((n, [, v]) => n + v, 0);
    const label = document.createElement("span");
    label.className = "nbt-task";
    label.textContent = `batch of ${total}`;
    const of = document.createElement("span");
    of.className = "nbt-muted";
    of.textContent = `${done}/${total} done`;
    head.replaceChildren(label, of, cancel);
    cancel.disabled = done === total;
    progress.firstChild.style.width = `${total ? (100 * done) / total : 0}%`;
    counts.replaceChildren(...Object.entries(c).sort().map(([s, n]) => {
      const b = badge(s);
      b.textContent = `${s} ${n}`;
      return b;
    }));
    grid.replaceChildren(...(model.get("sample") || []).map((r) => {
      const cell = document.createElement("span");
      cell.className = `nbt-s-${r.status}`;
      cell.title = `#${r.index} ${r.status}`;
      cell.addEventListener("click", () => model.send({ action: "select", run_id: r.id }));
      return cell;
    }));
    const sel = model.get("selected");
    if (sel && sel.id) {
      const h = document.createElement("div");
      h.className = "nbt-head";
      const p = document.createElement("div");
      p.className = "nbt-progress";
      p.append(document.createElement("div"));
      const t = document.createElement("div");
      t.className = "nbt-timeline";
      const tb = document.createElement("tbody");
      const table = document.createElement("table");
      table.className = "nbt-attempts";
      table.append(tb);
      renderRun(sel, { head: h, progress: p, timelineEl: t, attemptsEl: tb, timeline: [] });
      detail.replaceChildren(h, p, table);
    }
    feedback.textContent = model.get("feedback") || "";
  };
  for (const name of ["total", "counts", "sample", "selected", "feedback"]) {
    model.on(`change:${name}`, update);
  }
  update();
}

export default { render };
