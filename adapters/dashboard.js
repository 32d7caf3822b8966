// errands dashboard: plain JS, no library.  The page only listens: one
// server-sent events stream (read with fetch, so it can carry the token)
// tells it every change; cancel and retry call the app's own routes.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  // The page is served at <app>/dashboard: every URL is relative to <app>/.
  const app = new URL(".", location.href);
  const url = (path) => new URL(path.replace(/^\/+/, ""), app);
  const CLASS = { completed: "success", failed: "failure", canceled: "cancelled" };
  const cls = (status) => "s-" + (CLASS[status] || status);

  // ---------------------------------------------------------------- the token
  // From the URL fragment (never sent to a server) or the sign-in form; kept
  // for this tab only, and sent as a bearer header, never in a URL.
  const KEY = "errands-dashboard-token:" + app.pathname;
  let token = sessionStorage.getItem(KEY);
  const given = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (given) {
    token = decodeURIComponent(given[1]);
    sessionStorage.setItem(KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const headers = () => (token ? { authorization: "Bearer " + token } : {});

  // ---------------------------------------------------------------- state
  const tasks = new Map(); // task_id -> status object
  let order = []; // ids in view, newest first
  let routes = {}; // task name -> route
  let finals = new Set(["success", "failure", "cancelled"]);
  let selected = null; // the task whose details are open
  let args = null; // its arguments (fetched once)
  const filter = { name: "", status: "" };
  let batches = JSON.parse(sessionStorage.getItem("errands-dashboard-batches") || "[]");

  // ---------------------------------------------------------------- the stream
  let stream = null;
  async function connect() {
    if (stream) stream.abort();
    const mine = (stream = new AbortController());
    const query = new URLSearchParams({ limit: "100" });
    if (filter.name) query.set("name", filter.name);
    if (filter.status) query.set("status", filter.status);
    for (const id of batches) query.append("batch", id);
    live(false, "connecting…");
    try {
      const answer = await fetch(url("dashboard/events?" + query), {
        headers: headers(), signal: mine.signal, cache: "no-store",
      });
      if (answer.status === 401) return signIn();
      if (!answer.ok) throw new Error(await errorText(answer));
      live(true, "live");
      await readEvents(answer.body, handle);
    } catch (error) {
      if (mine.signal.aborted) return;
      notice(String(error.message || error));
    }
    if (mine !== stream) return;
    live(false, "reconnecting…"); // the stream ended (server restart, drain)
    setTimeout(() => mine === stream && connect(), 2000);
  }

  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onEvent(event, JSON.parse(data));
      }
    }
  }

  function handle(event, data) {
    if (event === "hello") hello(data);
    else if (event === "tasks") changed(data);
    else if (event === "stats") stats(data);
  }

  function hello(data) {
    routes = data.routes;
    finals = new Set(data.final);
    $("service").textContent = data.service;
    fillSelect($("fname"), Object.keys(routes), filter.name);
    fillSelect($("fstatus"), data.statuses, filter.status);
    $("signin").hidden = true;
    $("main").hidden = false;
  }

  function changed(data) {
    for (const task of data.tasks) tasks.set(task.task_id, task);
    order = data.ids;
    const keep = new Set(order);
    for (const id of tasks.keys()) if (!keep.has(id) && id !== selected) tasks.delete(id);
    renderRows();
    if (selected && data.tasks.some((t) => t.task_id === selected)) renderDetails();
  }

  // ---------------------------------------------------------------- the table
  const rows = new Map(); // task_id -> <tr>
  function renderRows() {
    const body = $("rows");
    const wanted = order.map((id) => row(tasks.get(id)));
    for (const [id, tr] of rows) if (!order.includes(id)) rows.delete(id) && tr.remove();
    body.replaceChildren(...wanted);
    $("empty").hidden = order.length > 0;
  }

  function row(task) {
    let tr = rows.get(task.task_id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.id = task.task_id;
      for (let i = 0; i < 8; i++) tr.append(document.createElement("td"));
      tr.tabIndex = 0; // keyboard: Tab to a row, Enter opens it
      tr.addEventListener("click", (e) => e.target.tagName !== "BUTTON" && open(task.task_id));
      tr.addEventListener("keydown", (e) => e.key === "Enter" && e.target === tr && open(task.task_id));
      rows.set(task.task_id, tr);
    }
    const [name, id, status, progress, created, took, attempt, actions] = tr.children;
    name.textContent = task.name;
    id.replaceChildren(el("span", "id", task.task_id.slice(0, 10)));
    id.title = task.task_id;
    status.replaceChildren(badge(task.status));
    progress.replaceChildren(...progressCell(task));
    created.textContent = clock(task.created_at);
    took.textContent = duration(task);
    attempt.textContent = `${task.attempt}/${task.max_attempts}`;
    actions.replaceChildren(...buttons(task));
    tr.className = task.task_id === selected ? "selected" : "";
    return tr;
  }

  function progressCell(task) {
    const out = [];
    if (task.progress != null) {
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.value = task.progress;
      out.push(bar, el("span", "pct", ` ${Math.round(task.progress * 100)}%`));
    }
    if (task.message) out.push(el("span", "msg", task.message));
    return out;
  }

  function buttons(task) {
    const final = finals.has(task.status);
    const cancel = el("button", "cancel", "Cancel");
    cancel.disabled = final;
    cancel.addEventListener("click", () => act(task, "cancel"));
    const retry = el("button", "retry", "Retry");
    retry.disabled = !final;
    retry.addEventListener("click", () => act(task, "retry"));
    return [cancel, " ", retry];
  }

  async function act(task, action) {
    const route = routes[task.name] || "/" + task.name;
    const method = action === "cancel" ? "POST" : "PUT";
    try {
      const answer = await fetch(url(`${route}/${action}?task_id=${encodeURIComponent(task.task_id)}`), {
        method, headers: headers(),
      });
      if (answer.status === 401) return signIn();
      if (!answer.ok) return notice(await errorText(answer));
      const body = await answer.json();
      notice(action === "cancel" ? `cancelled: ${body.status}` : `retried as ${body.task_id}`, true);
    } catch (error) {
      notice(String(error.message || error));
    }
  }

  // ---------------------------------------------------------------- details
  async function open(id) {
    selected = id;
    args = null;
    renderRows();
    renderDetails();
    try {
      const answer = await fetch(url("dashboard/task?task_id=" + encodeURIComponent(id)), { headers: headers() });
      if (!answer.ok) return notice(await errorText(answer));
      const body = await answer.json();
      if (selected !== id) return;
      args = body.args;
      tasks.set(id, { ...tasks.get(id), ...body });
      renderDetails();
    } catch (error) {
      notice(String(error.message || error));
    }
  }

  function renderDetails() {
    const task = tasks.get(selected);
    $("details").hidden = !task;
    $("main").classList.toggle("open", Boolean(task));
    if (!task) return;
    $("dtitle").textContent = `${task.name} · ${task.task_id}`;
    const waited = seconds(task.created_at, task.executed_at);
    const ran = seconds(task.executed_at, task.completed_at);
    const fields = [
      ["status", badge(task.status)],
      ["progress", task.progress == null ? "–" : `${Math.round(task.progress * 100)}%`],
      ["message", task.message || "–"],
      ["created", stamp(task.created_at)],
      ["started", stamp(task.executed_at)],
      ["finished", stamp(task.completed_at)],
      ["waited", waited == null ? "–" : human(waited)],
      ["ran", ran == null ? "–" : human(ran)],
      ["attempt", `${task.attempt} of ${task.max_attempts}`],
      ["retry of", task.retry_of || "–"],
      ["expires", stamp(task.expires_at)],
    ];
    $("dfields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", v)]));
    $("dargs").textContent = args == null ? "…" : JSON.stringify(args, null, 2);
    $("derror").hidden = !task.error;
    $("derrortext").textContent = task.error || ""; // "Type: message"
    $("dattempts").replaceChildren(...(task.attempts || []).map((a) => {
      const tr = document.createElement("tr");
      const took = seconds(a.started_at, a.finished_at);
      for (const text of [a.attempt, stamp(a.started_at), stamp(a.finished_at),
        took == null ? "–" : human(took), a.outcome, a.error || ""]) {
        tr.append(el("td", "", String(text)));
      }
      return tr;
    }));
    $("dcancel").disabled = finals.has(task.status);
    $("dretry").disabled = !finals.has(task.status);
  }

  // ---------------------------------------------------------------- counts, chart, batches
  function stats(data) {
    const tiles = Object.entries(data.counts).map(([status, count]) => {
      const tile = el("button", "tile " + cls(status), "");
      tile.dataset.status = status;
      tile.append(el("b", "", String(count)), status.replace("_", " "));
      if (filter.status === status) tile.classList.add("chosen");
      tile.addEventListener("click", () => setFilter("status", filter.status === status ? "" : status));
      return tile;
    });
    $("counts").replaceChildren(...tiles);
    $("countnote").textContent =
      `pending: the queue's depth; in progress: running anywhere; finished: among the newest ${data.window} tasks · updated ${clock(data.now)}`;
    chart(data.chart);
    renderBatches(data.batches);
  }

  function chart({ finished, depth }) {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 560;
    const height = canvas.clientHeight || 150;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, width, height);
    const style = getComputedStyle(document.documentElement);
    const pad = { left: 34, right: 34, top: 10, bottom: 18 };
    const w = width - pad.left - pad.right;
    const h = height - pad.top - pad.bottom;
    const n = finished.length;
    const step = w / n;
    const most = Math.max(1, ...finished);
    const deepest = Math.max(1, ...depth.map((d) => d || 0));
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = style.getPropertyValue("--muted");
    g.strokeStyle = style.getPropertyValue("--line");
    g.beginPath();
    g.moveTo(pad.left, pad.top + h + 0.5);
    g.lineTo(pad.left + w, pad.top + h + 0.5);
    g.stroke();
    g.textAlign = "right";
    g.fillText("0", pad.left - 4, pad.top + h);
    g.fillStyle = style.getPropertyValue("--success");
    g.fillText(String(most), pad.left - 4, pad.top + 8);
    g.textAlign = "left";
    g.fillStyle = style.getPropertyValue("--in_progress");
    g.fillText(String(deepest), pad.left + w + 4, pad.top + 8);
    g.fillStyle = style.getPropertyValue("--muted");
    g.textAlign = "center";
    g.fillText("−5 min", pad.left + 14, height - 4);
    g.fillText("now", pad.left + w - 10, height - 4);
    g.fillStyle = style.getPropertyValue("--success");
    finished.forEach((count, i) => {
      const bar = (count / most) * h;
      g.fillRect(pad.left + i * step + 1, pad.top + h - bar, Math.max(1, step - 2), bar);
    });
    const blue = style.getPropertyValue("--in_progress");
    g.strokeStyle = g.fillStyle = blue;
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false;
    const dots = [];
    depth.forEach((d, i) => {
      if (d == null) { drawing = false; return; }
      const x = pad.left + i * step + step / 2;
      const y = pad.top + h - (d / deepest) * h;
      if (drawing) g.lineTo(x, y); else g.moveTo(x, y);
      drawing = true;
      dots.push([x, y]);
    });
    g.stroke();
    for (const [x, y] of dots) g.fillRect(x - 2, y - 2, 4, 4);
  }

  function renderBatches(list) {
    $("batches").hidden = list.length === 0;
    $("batchlist").replaceChildren(...list.map((b) => {
      const li = el("li", "", "");
      const done = Object.entries(b.counts).filter(([s]) => finals.has(s)).reduce((sum, [, c]) => sum + c, 0);
      const bar = el("div", "bar", "");
      for (const [status, count] of Object.entries(b.counts)) {
        if (!count || !b.total) continue;
        const part = el("span", cls(status), "");
        part.style.width = `${(count / b.total) * 100}%`;
        part.title = `${status}: ${count}`;
        if (finals.has(status)) bar.append(part);
      }
      const failed = b.counts.failure || b.counts.failed || 0;
      li.append(el("span", "id", b.batch_id.slice(0, 14)), bar,
        el("span", "", `${done}/${b.total} done` + (failed ? ` · ${failed} failed` : "")));
      li.title = b.batch_id;
      return li;
    }));
  }

  // ---------------------------------------------------------------- filters, sign-in
  function setFilter(key, value) {
    filter[key] = value;
    $(key === "name" ? "fname" : "fstatus").value = value;
    tasks.clear();
    order = [];
    renderRows();
    connect();
  }

  function fillSelect(select, values, chosen) {
    const first = select.options[0];
    select.replaceChildren(first, ...values.map((v) => new Option(v.replace("_", " "), v)));
    select.value = chosen;
  }

  function signIn() {
    live(false, "signed out");
    $("main").hidden = true;
    $("signin").hidden = false;
    $("token").focus();
  }

  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(KEY, token);
    connect();
  });
  $("fname").addEventListener("change", (e) => setFilter("name", e.target.value));
  $("fstatus").addEventListener("change", (e) => setFilter("status", e.target.value));
  $("follow").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("fbatch").value.trim();
    if (!id) return;
    batches = [id, ...batches.filter((b) => b !== id)].slice(0, 8);
    sessionStorage.setItem("errands-dashboard-batches", JSON.stringify(batches));
    $("fbatch").value = "";
    connect();
  });
  $("close").addEventListener("click", () => {
    selected = null;
    renderDetails();
    renderRows();
  });
  $("dcancel").addEventListener("click", () => selected && act(tasks.get(selected), "cancel"));
  $("dretry").addEventListener("click", () => selected && act(tasks.get(selected), "retry"));

  // ---------------------------------------------------------------- small helpers
  function el(tag, className, content) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (content instanceof Node) node.append(content);
    else if (content) node.textContent = content;
    return node;
  }
  function badge(status) {
    return el("span", "badge " + cls(status), status.replace("_", " "));
  }
  function live(on, text) {
    $("live").className = "live" + (on ? " on" : "");
    $("live").textContent = text;
  }
  let noticeTimer = null;
  function notice(text, ok = false) {
    $("notice").textContent = text;
    $("notice").className = ok ? "ok" : "";
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => ($("notice").textContent = ""), 8000);
  }
  async function errorText(answer) {
    try {
      return (await answer.json()).error || `HTTP ${answer.status}`;
    } catch {
      return `HTTP ${answer.status}`;
    }
  }
  function seconds(from, to) {
    return from && to ? (Date.parse(to) - Date.parse(from)) / 1000 : null;
  }
  function human(s) {
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }
  function duration(task) {
    if (!task.executed_at) return "";
    const end = task.completed_at ? Date.parse(task.completed_at) : Date.now();
    return human(Math.max(0, end - Date.parse(task.executed_at)) / 1000);
  }
  function clock(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "";
  }
  function stamp(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  connect();
})();
