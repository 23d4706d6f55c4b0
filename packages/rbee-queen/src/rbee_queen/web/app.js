// The queen's live page: hives, workers, jobs and their narration, per-worker charts, a prompt.
//
// Reads the queen's own API with the token kept in localStorage (Authorization: Bearer on every
// fetch). Job streams are EventSources, which cannot send headers: POST /v1/session trades the
// token for a short-lived HttpOnly cookie that opens job streams only, renewed before it expires.
// A stream that breaks is resumed by the browser with Last-Event-ID; events are deduplicated by
// seq here too (docs/protocol.md §10), so a resumed stream shows nothing twice.
"use strict";

(() => {
  const TOKEN_KEY = "rbee.token";
  const TERMINAL = ["succeeded", "failed", "cancelled", "expired"];
  const TYPES = ["narration", "progress", "data", "gap", ...TERMINAL];
  const POLL_MS = 2000;
  const WINDOW_MS = 10 * 60 * 1000;
  const MAX_FOLLOWED = 3; // browsers allow 6 connections per origin: leave room for the rest
  const MAX_NARRATION = 300;
  const MAX_TRACKED = 500;

  const $ = (selector) => document.querySelector(selector);
  const charts = new window.WorkerCharts($("#chart-tps"), $("#chart-ttft"), $("#legend"), WINDOW_MS);
  $("#window-min").textContent = String(WINDOW_MS / 60000);

  let token = localStorage.getItem(TOKEN_KEY) || "";
  let sessionTimer = null;
  let sessionOpen = null; // the session request in flight, shared by whoever waits for it
  const tracked = new Map(); // job id -> {job, state, follower, worker, charted}
  const waiting = []; // job ids to follow once a slot is free
  let prompt = null; // {jobId, follower}

  // -- the API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    let payload = null;
    try {
      payload = await response.json();
    } catch (_) {
      payload = null;
    }
    if (!response.ok) {
      const error = (payload && payload.error) || {};
      throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || response.statusText);
    }
    return payload;
  }

  function setConn(text, kind) {
    const conn = $("#conn");
    conn.textContent = text;
    conn.className = `pill ${kind || ""}`;
  }

  // The stream cookie: opened now, renewed at 80 % of its lifetime.
  function openSession() {
    if (!sessionOpen) {
      clearTimeout(sessionTimer);
      sessionOpen = api("/v1/session", { method: "POST" })
        .then((s) => {
          sessionTimer = setTimeout(openSession, Math.max(5, s.expires_in * 0.8) * 1000);
          return true;
        })
        .catch((e) => {
          if (e.status === 401 || e.status === 403) setConn("token refused", "bad");
          else sessionTimer = setTimeout(openSession, 5000);
          return false;
        })
        .finally(() => {
          sessionOpen = null;
        });
    }
    return sessionOpen;
  }

  // -- following one job's stream ------------------------------------------------------------

  class Follower {
    constructor(job, onEvent, onEnd) {
      this.job = job;
      this.onEvent = onEvent;
      this.onEnd = onEnd;
      this.lastSeq = 0;
      this.done = false;
      this.failures = 0;
      this.connects = 0;
      this.open(job.sse_url);
    }

    open(url) {
      // same origin: the browser sends the stream cookie; never a token in the URL
      const source = new EventSource(url);
      this.source = source;
      for (const type of TYPES) source.addEventListener(type, (ev) => this.receive(type, ev));
      source.onopen = () => {
        this.failures = 0;
        this.connects += 1;
      };
      source.onerror = () => {
        // A broken connection: the browser reconnects by itself with Last-Event-ID. A refusal
        // (an expired cookie, a gone job) closes the source: renew the cookie, reopen after.
        if (source.readyState === EventSource.CLOSED && !this.done) this.reopen();
      };
    }

    async reopen() {
      this.source.close();
      this.failures += 1;
      if (this.failures > 5) {
        this.finish(null);
        return;
      }
      await openSession();
      setTimeout(() => {
        if (!this.done) this.open(`${this.job.sse_url}?after=${this.lastSeq}`);
      }, 1000 * this.failures);
    }

    receive(type, ev) {
      if (this.done) return;
      let envelope;
      try {
        envelope = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (type !== "gap") {
        if (!(envelope.seq > this.lastSeq)) return; // a replayed event: shown already
        this.lastSeq = envelope.seq;
      }
      this.onEvent(envelope);
      if (TERMINAL.includes(type)) this.finish(envelope);
    }

    finish(envelope) {
      if (this.done) return;
      this.done = true;
      this.source.close();
      this.onEnd(envelope);
    }

    close() {
      this.done = true;
      this.source.close();
    }
  }

  // -- rendering -----------------------------------------------------------------------------

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function emptyRow(columns, text) {
    const tr = document.createElement("tr");
    const td = cell(text, "empty");
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function ago(seconds) {
    if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    return `${Math.floor(seconds / 3600)} h ago`;
  }

  function renderHives(hives) {
    const hiveRows = [];
    const workerRows = [];
    const models = new Set();
    for (const hive of hives) {
      const tr = document.createElement("tr");
      tr.dataset.hive = hive.hive_id;
      tr.append(
        cell(hive.hive_id),
        cell(hive.state, `state-${hive.state}`),
        cell(ago(hive.seconds_since_seen)),
        cell(String(hive.models.length)),
        cell(bytes(hive.free_memory_bytes), "num"),
      );
      tr.title = hive.url;
      hiveRows.push(tr);
      for (const name of hive.models) models.add(name);
      for (const worker of hive.workers || []) {
        const row = document.createElement("tr");
        row.dataset.worker = worker.worker_id;
        row.dataset.model = worker.model;
        row.dataset.state = worker.state;
        const health = worker.healthy === false ? " (unhealthy)" : "";
        row.append(
          cell(worker.worker_id),
          cell(hive.hive_id),
          cell(worker.model),
          cell(worker.engine || ""),
          cell(worker.state + health, `state-${worker.state}`),
          cell(`${worker.in_flight} in flight`, "num"),
        );
        workerRows.push(row);
      }
    }
    $("#hives tbody").replaceChildren(...(hiveRows.length ? hiveRows : [emptyRow(5, "no hive has registered")]));
    $("#workers tbody").replaceChildren(...(workerRows.length ? workerRows : [emptyRow(6, "no workers")]));
    $("#models").replaceChildren(
      ...[...models].sort().map((name) => {
        const option = document.createElement("option");
        option.value = name;
        return option;
      }),
    );
  }

  function renderJobs(jobs) {
    const rows = jobs.map((job) => {
      const tr = document.createElement("tr");
      tr.dataset.job = job.job_id;
      const entry = tracked.get(job.job_id);
      if (entry && entry.follower && !entry.follower.done) tr.className = "followed";
      tr.append(
        cell(job.job_id.slice(0, 12)),
        cell(job.operation),
        cell(job.state, `state-${job.state}`),
        cell(new Date(job.created_at).toLocaleTimeString()),
      );
      tr.title = job.job_id;
      return tr;
    });
    $("#jobs tbody").replaceChildren(...(rows.length ? rows : [emptyRow(4, "no jobs yet")]));
  }

  function narrate(envelope) {
    const list = $("#narration");
    const li = document.createElement("li");
    const p = envelope.payload || {};
    const job = document.createElement("span");
    job.className = "job";
    job.textContent = envelope.job_id.slice(4, 12);
    const where = envelope.origin ? ` [${envelope.origin.service}]` : "";
    const time = new Date(envelope.timestamp).toLocaleTimeString();
    let text;
    if (envelope.type === "progress") {
      const total = p.total === null || p.total === undefined ? "" : `/${p.total}`;
      text = `${p.action}: ${p.current}${total} ${p.unit || ""} ${p.message || ""}`;
    } else if (envelope.type === "failed") {
      text = `failed: ${p.code}: ${p.message}`;
    } else if (envelope.type === "cancelled" || envelope.type === "expired") {
      text = `${envelope.type}: ${p.reason}`;
    } else if (envelope.type === "succeeded") {
      text = "succeeded";
    } else {
      text = `${p.action}: ${p.message}`;
      li.className = `lvl-${p.level}`;
    }
    li.append(`${time} `, job, `${where} ${text}`);
    list.prepend(li);
    while (list.children.length > MAX_NARRATION) list.lastElementChild.remove();
  }

  // What every followed stream feeds: narration lines, and each generation's numbers for the
  // chart (the queen's "routed" narration names the worker; the result has ttft and tokens/s).
  function record(entry, envelope) {
    if (envelope.type === "narration" && !envelope.origin && envelope.payload.action === "routed") {
      entry.worker = (envelope.payload.fields || {}).worker_id || entry.worker;
    }
    if (envelope.type === "succeeded" && entry.job.operation === "infer" && !entry.charted) {
      const result = envelope.payload.result || {};
      entry.charted = true;
      charts.add(entry.worker || result.engine || "?", Date.parse(envelope.timestamp), result.tokens_per_s, result.ttft_ms);
    }
    if (envelope.type !== "data") narrate(envelope);
  }

  // -- which jobs to follow --------------------------------------------------------------------

  function wanted(job) {
    // running jobs (their narration, live), and generations of the chart's window (their numbers)
    if (job.state === "running" || job.state === "queued") return true;
    const finished = Date.parse(job.finished_at || job.created_at);
    return job.operation === "infer" && job.state === "succeeded" && Date.now() - finished < WINDOW_MS;
  }

  function following() {
    let n = 0;
    for (const entry of tracked.values()) if (entry.follower && !entry.follower.done) n += 1;
    return n;
  }

  function follow(entry) {
    entry.follower = new Follower(
      entry.job,
      (envelope) => record(entry, envelope),
      () => {
        pump();
        refresh(); // the job's new state, and the workers' load, without waiting for the poll
      },
    );
  }

  function pump() {
    while (waiting.length && following() < MAX_FOLLOWED) {
      const entry = tracked.get(waiting.shift());
      if (entry && !entry.follower) follow(entry);
    }
  }

  function track(jobs) {
    // oldest first, so that narration and the chart fill in the order things happened
    for (const job of [...jobs].reverse()) {
      if (tracked.has(job.job_id)) continue;
      // a queued job would start if the page subscribed: leave it to whoever created it
      if (job.state === "queued" || !wanted(job)) continue;
      tracked.set(job.job_id, { job, follower: null, worker: null, charted: false });
      waiting.push(job.job_id);
    }
    while (tracked.size > MAX_TRACKED) {
      const [oldest, entry] = tracked.entries().next().value;
      if (entry.follower) entry.follower.close();
      tracked.delete(oldest);
    }
    pump();
  }

  // -- polling -------------------------------------------------------------------------------

  let sessionReady = false;

  async function refresh() {
    try {
      const [hives, jobs] = await Promise.all([api("/v1/hives"), api("/v1/jobs?limit=25")]);
      renderHives(hives.hives);
      renderJobs(jobs.jobs);
      setConn("live", "ok");
      if (!sessionReady) sessionReady = await openSession();
      if (sessionReady) track(jobs.jobs);
    } catch (e) {
      if (e.status === 401) setConn(token ? "token refused" : "enter the token", "bad");
      else if (e.status === 403) setConn("token may not read jobs", "bad");
      else setConn("queen unreachable", "bad");
    }
  }

  async function poll() {
    await refresh();
    setTimeout(poll, POLL_MS);
  }

  // -- the prompt box --------------------------------------------------------------------------

  async function run(event) {
    event.preventDefault();
    if (prompt && !prompt.follower.done) return;
    const output = $("#output");
    const status = $("#run-status");
    const text = $("#prompt").value;
    const body = {
      operation: "infer",
      model: $("#model").value.trim(),
      max_tokens: Number($("#max-tokens").value) || 64,
      temperature: Number($("#temperature").value) || 0,
    };
    if ($("#raw").checked) body.prompt = text;
    else body.messages = [{ role: "user", content: text }];
    output.textContent = "";
    output.dataset.state = "starting";
    delete output.dataset.jobId;
    status.textContent = "starting";
    $("#run").disabled = true;
    let job;
    try {
      if (!(await openSession())) throw new ApiError(401, "unauthorized", "the token was refused");
      job = await api("/v1/jobs", { method: "POST", body });
    } catch (e) {
      output.dataset.state = "failed";
      status.textContent = `refused: ${e.message}`;
      $("#run").disabled = false;
      return;
    }
    output.dataset.jobId = job.job_id;
    output.dataset.state = "running";
    status.textContent = `${job.job_id}: running`;
    $("#stop").disabled = false;
    const entry = { job, follower: null, worker: null, charted: false };
    tracked.set(job.job_id, entry);
    const follower = new Follower(
      job,
      (envelope) => {
        if (envelope.type === "data" && envelope.payload && typeof envelope.payload.text === "string") {
          output.append(envelope.payload.text); // text, never HTML
        }
        record(entry, envelope);
      },
      (envelope) => {
        $("#run").disabled = false;
        $("#stop").disabled = true;
        output.dataset.connects = String(follower.connects);
        if (!envelope) {
          output.dataset.state = "lost";
          status.textContent = `${job.job_id}: lost the stream`;
          return;
        }
        output.dataset.state = envelope.type;
        const p = envelope.payload || {};
        if (envelope.type === "succeeded") {
          const r = p.result || {};
          status.textContent =
            `${job.job_id}: ${r.finish_reason}, ${r.completion_tokens} tokens, ` +
            `first token ${Math.round(r.ttft_ms)} ms, ${Number(r.tokens_per_s).toFixed(1)} tok/s`;
        } else if (envelope.type === "failed") {
          status.textContent = `${job.job_id}: failed: ${p.code}: ${p.message}`;
        } else {
          status.textContent = `${job.job_id}: ${envelope.type}: ${p.reason}`;
        }
        pump();
        refresh();
      },
    );
    entry.follower = follower;
    prompt = { jobId: job.job_id, follower };
  }

  async function stop() {
    if (!prompt) return;
    try {
      await api(`/v1/jobs/${encodeURIComponent(prompt.jobId)}`, { method: "DELETE" });
    } catch (e) {
      $("#run-status").textContent = `cancel refused: ${e.message}`;
    }
  }

  // -- the token -------------------------------------------------------------------------------

  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("#token").value.trim();
    $("#token").value = "";
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    sessionReady = false;
    refresh();
  });
  $("#token-forget").addEventListener("click", async () => {
    clearTimeout(sessionTimer);
    await api("/v1/session", { method: "DELETE" }).catch(() => {});
    token = "";
    localStorage.removeItem(TOKEN_KEY);
    sessionReady = false;
    setConn("enter the token", "bad");
  });
  $("#token").placeholder = token ? "token saved in this browser" : "keeper token";
  $("#prompt-form").addEventListener("submit", run);
  $("#stop").addEventListener("click", stop);

  function tick() {
    charts.draw(Date.now());
  }
  setInterval(tick, 1000);
  tick();
  poll();
})();
