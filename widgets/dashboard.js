// The dashboard page: the notebook's own widgets (their front-end modules, as anywidget
// loads them) on a page of their own, fed by the dashboard's process instead of a kernel.
// An event stream brings their state and updates and the store server's status; their
// messages (buttons, filters) go back as POSTs, one at a time, in order.

const config = JSON.parse(document.getElementById("nbtasks-config").textContent);
const view = document.querySelector(".nbt-dash-view");
const nav = document.querySelector(".nbt-dash-nav");
const serverBox = document.querySelector(".nbt-dash-server");

let page = null; // this page's id at the dashboard, from the stream's hello
let models = new Map(); // comm id -> Model
let sending = Promise.resolve();

function post(message) {
  const to = page;
  sending = sending.then(() => fetch(`${config.base}send?page=${encodeURIComponent(to)}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-XSRFToken": config.xsrf },
    body: JSON.stringify(message),
  })).then((response) => {
    if (!response.ok) showError(`the dashboard refused a message (${response.status})`);
  }, () => showError("the dashboard is not reachable"));
}

// What a widget's front-end code sees of its model: anywidget's model interface.
class Model {
  constructor(commId, state) {
    this.commId = commId;
    this.state = { ...state };
    this.changed = {};
    this.listeners = new Map();
  }

  get(name) { return this.state[name]; }

  set(name, value) {
    this.state[name] = value;
    this.changed[name] = value;
    this.emit(`change:${name}`, this, value);
    this.emit("change", this);
  }

  save_changes() {
    const state = this.changed;
    this.changed = {};
    if (Object.keys(state).length) {
      post({ comm_id: this.commId, data: { method: "update", state, buffer_paths: [] } });
    }
  }

  send(content) {
    post({ comm_id: this.commId, data: { method: "custom", content } });
  }

  on(name, callback) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(callback);
  }

  off(name, callback) {
    if (!name) this.listeners.clear();
    else if (!callback) this.listeners.delete(name);
    else this.listeners.get(name)?.delete(callback);
  }

  emit(name, ...args) {
    for (const callback of [...(this.listeners.get(name) || [])]) callback(...args);
  }

  update(state) { // from the dashboard: every value first, then the change events
    Object.assign(this.state, state);
    for (const [name, value] of Object.entries(state)) this.emit(`change:${name}`, this, value);
    this.emit("change", this);
  }
}

const styled = new Set();

async function open(commId, state) {
  const model = new Model(commId, state);
  models.set(commId, model);
  if (!state._esm) return; // not a view of its own, e.g. a widget's layout
  if (state._css && !styled.has(state._anywidget_id)) {
    styled.add(state._anywidget_id);
    const style = document.createElement("style");
    style.textContent = state._css;
    document.head.append(style);
  }
  const url = URL.createObjectURL(new Blob([state._esm], { type: "text/javascript" }));
  const module = await import(url);
  URL.revokeObjectURL(url);
  const el = document.createElement("div");
  el.className = "nbt-dash-widget";
  view.append(el);
  await module.default.render({ model, el, experimental: {} });
  if (config.view === "table") followOpenedRun(model);
}

// The table opens a run below it; its page (live, with the run's buttons) is a link away.
function followOpenedRun(model) {
  const show = () => {
    const id = (model.get("detail") || {}).id;
    nav.replaceChildren();
    if (!id) return;
    const link = document.createElement("a");
    link.className = "nbt-dash-run-link";
    link.href = `${config.base}runs/${encodeURIComponent(id)}`;
    link.textContent = `Open the page of ${id}`;
    nav.append(link);
  };
  model.on("change:detail", show);
  show();
}

function showError(message) {
  let box = document.querySelector(".nbt-dash-error");
  if (!box) {
    box = document.createElement("div");
    box.className = "nbt-dash-error";
    view.before(box);
  }
  box.textContent = message;
}

function showServer(message) {
  if (message.error) {
    serverBox.textContent = `server: ${message.error}`;
    serverBox.dataset.state = "error";
    return;
  }
  const info = message.info;
  const live = Object.entries(info.live_runs || {}).map(([s, n]) => `${n} ${s}`).join(", ");
  const item = (label, value, cls) => {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = `${label} ${value}`;
    return span;
  };
  const clients = document.createElement("ul");
  clients.className = "nbt-dash-clients";
  for (const c of info.clients || []) {
    const li = document.createElement("li");
    li.textContent = c.name || "?";
    li.title = `pid ${c.pid}`;
    clients.append(li);
  }
  serverBox.dataset.state = "up";
  serverBox.replaceChildren(
    item("server pid", info.pid, "nbt-dash-pid"),
    item("executor", `${info.executor}, ${info.workers} workers`, "nbt-dash-executor"),
    item("live runs:", live || "none", "nbt-dash-live"),
    item("connected:", "", "nbt-dash-connected"),
    clients,
  );
}

function connect() {
  const query = config.view === "run"
    ? `view=run&run=${encodeURIComponent(config.run)}` : "view=table";
  const events = new EventSource(`${config.base}events?${query}`);
  events.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") { // a new page at the dashboard: draw everything anew
      page = message.page;
      models = new Map();
      view.replaceChildren();
      nav.replaceChildren();
      document.querySelector(".nbt-dash-error")?.remove();
    } else if (message.type === "server") {
      showServer(message);
    } else if (message.type === "error") {
      showError(message.message);
    } else if (message.type === "comm_open") {
      open(message.comm_id, message.data.state).catch((e) => showError(String(e)));
    } else if (message.type === "comm_msg") {
      const model = models.get(message.comm_id);
      const data = message.data;
      if (!model) return;
      if (data.method === "update") model.update(data.state);
      else if (data.method === "custom") model.emit("msg:custom", data.content, []);
    }
  };
  events.onerror = () => {
    serverBox.dataset.state = "lost";
    serverBox.textContent = "dashboard unreachable: retrying";
  };
}

connect();
