// One compact widget for a batch of runs: counts per status, progress, and a grid of its
// items, a page at a time; a status badge filters the grid to that status.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "nbt nbt-batch";
  const head = document.createElement("div");
  head.className = "nbt-head";
  const counts = document.createElement("div");
  counts.className = "nbt-counts";
  const progress = document.createElement("div");
  progress.className = "nbt-stacked";
  const nav = text("div", "", "nbt-grid-nav");
  const prev = text("button", "◀", "nbt-grid-prev");
  const next = text("button", "▶", "nbt-grid-next");
  const range = text("span", "", "nbt-muted nbt-grid-range");
  nav.append(prev, range, next);
  const grid = document.createElement("div");
  grid.className = "nbt-grid";
  const detail = document.createElement("div");
  const cancel = document.createElement("button");
  cancel.textContent = "Cancel all";
  cancel.className = "nbt-cancel";
  cancel.addEventListener("click", () => model.send({ action: "cancel_all" }));
  const feedback = document.createElement("div");
  feedback.className = "nbt-feedback";
  root.append(head, progress, counts, nav, grid, detail, feedback);
  el.append(root);
  const page = (delta) => model.send({ action: "grid", page: (model.get("grid").page || 0) + delta });
  prev.addEventListener("click", () => page(-1));
  next.addEventListener("click", () => page(1));

  const update = () => {
    const total = model.get("total");
    const c = model.get("counts") || {};
    const finals = Object.entries(c).filter(([s]) => FINAL.has(s)).sort();
    const done = finals.reduce((n, [, v]) => n + v, 0);
    // what did not complete is said, so a stopped batch does not read as done
    const others = finals.filter(([s]) => s !== "COMPLETED")
      .map(([s, v]) => `${v} ${s.toLowerCase().replace("_", " ")}`);
    const of = text("span", `${done}/${total} finished` + (others.length ? ` (${others.join(", ")})` : ""),
      "nbt-muted nbt-done");
    head.replaceChildren(text("span", `batch of ${total}`, "nbt-task"), of, cancel);
    cancel.disabled = done === total;
    // one segment per final status, in its colour: full exactly when every run is final
    progress.replaceChildren(...finals.map(([s, v]) => {
      const seg = text("div", "", `nbt-s-${s}`);
      seg.style.width = `${total ? (100 * v) / total : 0}%`;
      seg.dataset.status = s;
      return seg;
    }));
    const g = model.get("grid") || {};
    counts.replaceChildren(...Object.entries(c).sort().map(([s, n]) => {
      const b = badge(s);
      b.textContent = `${s} ${n}`;
      b.title = g.status === s ? "show every status" : `show only ${s} items`;
      if (g.status === s) b.classList.add("nbt-active");
      b.addEventListener("click", () => model.send({ action: "grid", status: s }));
      return b;
    }));
    const sample = model.get("sample") || [];
    const first = (g.page || 0) * (g.size || 0);
    range.textContent = sample.length
      ? `${g.status ? `${g.status}: ` : ""}items ${first + 1}–${first + sample.length} of ${g.matching}`
        + (g.status ? ` (#${sample[0].index}–#${sample[sample.length - 1].index})` : "")
      : `${g.status ? `${g.status}: ` : ""}no items`;
    prev.disabled = !g.page;
    next.disabled = first + sample.length >= (g.matching || 0);
    nav.style.display = g.status || (g.matching || 0) > (g.size || 0) ? "flex" : "none";
    grid.replaceChildren(...sample.map((r) => {
      const cell = document.createElement("span");
      cell.className = `nbt-s-${r.status}`;
      cell.title = `#${r.index} ${r.status}`;
      cell.dataset.index = String(r.index);
      cell.dataset.status = r.status;
      cell.addEventListener("click", () => model.send({ action: "select", run_id: r.id }));
      return cell;
    }));
    renderDetail(detail, model.get("selected"));
    feedback.textContent = feedbackText(model.get("feedback"));
  };
  for (const name of ["total", "counts", "sample", "grid", "selected", "feedback"]) {
    model.on(`change:${name}`, update);
  }
  update();
}

export default { render };
