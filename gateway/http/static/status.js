// The gateway's status page: recent jobs from GET /api/jobs, live updates from the SSE stream
// GET /api/jobs/events, last-hour counts from GET /api/jobs/stats. Job ids, user ids and error messages
// come from outside: they are only ever set as textContent, never parsed as HTML.
(() => {
  "use strict";

  const LIMIT = 50;
  const RANK = { pending: 0, initializing: 1, generating: 2, saving: 3, completed: 4, failed: 4, canceled: 4 };
  const TERMINAL = new Set(["completed", "failed", "canceled"]);
  const LABELS = [...document.querySelectorAll("thead th")].map((header) => header.textContent);
  const RELOAD_MS = 1000; // at most one list reload a second, however many events arrive
  const REFRESH_MS = 15000;
  const RETRY_MS = 3000;

  const byId = (id) => document.getElementById(id);
  const rows = byId("job-rows");
  const jobs = new Map(); // job_id -> {job, row}
  let source = null;
  let lastEventId = null;
  let timers = [];
  let reloadDue = null;
  let generation = 0; // bumped on sign-out, so late answers of a stopped page are ignored
  let signedIn = false; // the API answered since the page (re)started: a 401 now means the session ended
  let listed = false; // the job list answered since the page (re)started: before that, "Loading jobs…"

  class Unauthorized extends Error {}

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (response.status === 401) throw new Unauthorized(path);
    if (!response.ok) throw new Error(`${path} answered HTTP ${response.status}`);
    return response.json();
  }

  function setConnection(state, text) {
    const element = byId("connection");
    element.dataset.state = state;
    element.textContent = text;
  }

  // ---- formatting -------------------------------------------------------------------------------

  function seconds(milliseconds) {
    if (milliseconds < 10000) return `${(Math.max(0, milliseconds) / 1000).toFixed(1)} s`;
    const total = Math.round(milliseconds / 1000);
    if (total < 60) return `${total} s`;
    if (total < 3600) return `${Math.floor(total / 60)} min ${total % 60} s`;
    if (total < 86400) return `${Math.floor(total / 3600)} h ${Math.floor((total % 3600) / 60)} min`;
    return `${Math.floor(total / 86400)} d`;
  }

  function ago(iso) {
    const when = Date.parse(iso);
    return Number.isNaN(when) ? "–" : `${seconds(Date.now() - when)} ago`;
  }

  // A job whose first event was its last (created and completed at once) was never seen running: the
  // gateway cannot time it, and says so rather than "0.0 s" (the backend's own figure shows beside it).
  function seenOnlyFinished(job) {
    return Boolean(job.completed_at) && Date.parse(job.completed_at) <= Date.parse(job.created_at);
  }

  function duration(job) {
    const started = Date.parse(job.created_at);
    if (Number.isNaN(started)) return "–";
    if (seenOnlyFinished(job)) return "finished when first seen";
    if (job.completed_at) return seconds(Date.parse(job.completed_at) - started);
    return `running ${seconds(Date.now() - started)}`;
  }

  function time(iso) {
    const element = document.createElement("time");
    element.dateTime = iso;
    element.title = iso;
    element.textContent = ago(iso);
    return element;
  }

  function text(tag, className, value) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    element.textContent = value;
    return element;
  }

  // ---- the jobs table ---------------------------------------------------------------------------

  function render(job) {
    const status = Object.hasOwn(RANK, job.status) ? job.status : "unknown";
    const row = document.createElement("tr");
    row.dataset.status = status;

    const reported = job.metadata || {};
    const who = [
      job.user_id && `user ${job.user_id}`,
      job.organization_id && `org ${job.organization_id}`,
      reported.model_name && `model ${reported.model_name}`,
    ];
    const identity = document.createElement("td");
    identity.className = "job";
    const id = text("span", "job-id", job.job_id);
    id.title = job.job_id;
    identity.append(id);
    if (who.some(Boolean)) identity.append(text("span", "who", who.filter(Boolean).join(" · ")));
    // A canceled job's message is its reason, not an error: shown, but not as a failure.
    if (job.error_message) {
      identity.append(text("span", status === "canceled" ? "job-reason" : "job-error", job.error_message));
    }

    const badge = text("span", `badge status-${status}`, job.status);
    const statusCell = document.createElement("td");
    statusCell.append(badge);

    const created = document.createElement("td");
    created.append(time(job.created_at));
    const updated = document.createElement("td");
    updated.className = "optional";
    updated.append(time(job.updated_at));

    // The gateway's view (first heard of to finished), and the backend's own figure when it sent one.
    const took = document.createElement("td");
    const elapsed = text("span", "elapsed", duration(job));
    if (seenOnlyFinished(job)) elapsed.title = "The gateway first heard of this job with its final status";
    took.append(elapsed);
    if (typeof reported.generation_time_seconds === "number") {
      took.append(text("span", "who", `generation ${reported.generation_time_seconds} s`));
    }

    const cells = [identity, text("td", "kind", job.kind), statusCell, created, took, updated];
    // Narrow screens hide the header row and show each cell's column name beside it (see status.css).
    cells.forEach((cell, index) => index > 0 && (cell.dataset.label = LABELS[index]));
    row.append(...cells);
    return row;
  }

  function upsert(job, highlight) {
    const previous = jobs.get(job.job_id);
    const row = render(job);
    if (highlight || (previous && previous.row.classList.contains("fresh"))) {
      row.classList.add("fresh");
      // Only once: moving a row (reorder) would otherwise replay the highlight of every row ever changed.
      row.addEventListener("animationend", () => row.classList.remove("fresh"), { once: true });
    }
    if (previous) previous.row.replaceWith(row);
    jobs.set(job.job_id, { job, row });
  }

  function reorder() {
    const entries = [...jobs.values()].sort((a, b) => Date.parse(b.job.created_at) - Date.parse(a.job.created_at));
    for (const stale of entries.slice(2 * LIMIT)) jobs.delete(stale.job.job_id);
    rows.replaceChildren(...entries.slice(0, 2 * LIMIT).map((entry) => entry.row));
    byId("loading").hidden = listed;
    byId("empty").hidden = !listed || jobs.size > 0;
  }

  async function loadJobs() {
    const page = await getJSON(`/api/jobs?limit=${LIMIT}`);
    for (const job of page.jobs) {
      const known = jobs.get(job.job_id);
      if (!known || JSON.stringify(known.job) !== JSON.stringify(job)) upsert(job, false);
    }
    listed = true;
    reorder();
    refreshTimes(); // every row's "ago" from the same instant
    byId("load-error").textContent = "";
  }

  // A burst of events becomes one list reload, which brings exact timings and error messages.
  function scheduleReload() {
    if (reloadDue !== null) return;
    const mine = generation;
    reloadDue = setTimeout(() => {
      reloadDue = null;
      if (mine === generation) loadJobs().then(loadStats).catch(failed);
    }, RELOAD_MS);
  }

  // What an event says about its job, shown at once (the reload that follows corrects any detail).
  function applyEvent(event) {
    const known = jobs.get(event.job_id);
    if (!known) {
      upsert(
        {
          job_id: event.job_id,
          kind: event.kind,
          status: event.status,
          created_at: event.received_at,
          updated_at: event.received_at,
          completed_at: TERMINAL.has(event.status) ? event.received_at : null,
          user_id: event.user_id,
          organization_id: event.organization_id,
        },
        true,
      );
      reorder();
    } else if (event.outcome === "applied" && !TERMINAL.has(known.job.status) && RANK[event.status] >= RANK[known.job.status]) {
      const job = { ...known.job, status: event.status, updated_at: event.received_at };
      if (TERMINAL.has(event.status)) job.completed_at = event.received_at;
      upsert(job, true);
    }
    scheduleReload();
  }

  // ---- counts for the last hour -----------------------------------------------------------------

  async function loadStats() {
    const stats = await getJSON("/api/jobs/stats");
    const created = Object.values(stats.created).reduce((sum, count) => sum + count, 0);
    const running = Object.entries(stats.created)
      .filter(([status]) => !TERMINAL.has(status))
      .reduce((sum, [, count]) => sum + count, 0);
    byId("stat-created").textContent = String(created);
    byId("stat-running").textContent = String(running);
    byId("stat-completed").textContent = String(stats.completed);
    byId("stat-failed").textContent = String(stats.failed);
    byId("stat-canceled").textContent = String(stats.canceled);
    const ratio = stats.failure_ratio;
    byId("stat-ratio").textContent = ratio === null ? "–" : `${(ratio * 100).toFixed(1)} %`;
    byId("stat-ratio-box").dataset.tone = ratio === null ? "none" : ratio >= 0.05 ? "bad" : "good";
  }

  // ---- the live stream --------------------------------------------------------------------------

  function openStream(after) {
    if (source) source.close();
    const mine = generation;
    const url = after === null ? "/api/jobs/events" : `/api/jobs/events?after=${encodeURIComponent(after)}`;
    source = new EventSource(url);
    source.onopen = () => {
      setConnection("live", "Live");
      // The stream starts where the store stood when it opened: the list read now misses nothing before.
      loadJobs().then(loadStats).catch(failed);
    };
    source.onmessage = (message) => {
      lastEventId = message.lastEventId || lastEventId;
      try {
        applyEvent(JSON.parse(message.data));
      } catch (error) {
        console.warn("status page: unreadable event", error);
      }
    };
    // The gateway dropped us for reading too slowly: resume right after the last event it sent.
    source.addEventListener("overflow", (message) => {
      let resume = lastEventId;
      try {
        resume = JSON.parse(message.data).resume_after;
      } catch {
        // keep the last id seen
      }
      openStream(resume);
    });
    source.onerror = () => {
      if (mine !== generation) return;
      if (source.readyState !== EventSource.CLOSED) {
        setConnection("connecting", "Reconnecting…"); // EventSource retries by itself, with Last-Event-ID
        return;
      }
      // Closed for good (e.g. a 401 once the session expired): find out why before trying again.
      setConnection("down", "Disconnected");
      loadStats()
        .then(() => setTimeout(() => mine === generation && openStream(lastEventId), RETRY_MS))
        .catch(failed);
    };
  }

  // ---- signing in and out -----------------------------------------------------------------------

  function stop() {
    generation += 1;
    if (source) source.close();
    source = null;
    timers.forEach(clearInterval);
    timers = [];
    clearTimeout(reloadDue);
    reloadDue = null;
  }

  function showSignIn(message) {
    stop();
    signedIn = false;
    byId("dashboard").hidden = true;
    byId("sign-in").hidden = false;
    byId("sign-out").hidden = true;
    byId("sign-in-error").textContent = message || "";
    setConnection("signed-out", "Sign-in needed");
    byId("token").focus();
  }

  function failed(error) {
    if (error instanceof Unauthorized) {
      showSignIn(signedIn ? "Your session ended: sign in again." : "");
      return;
    }
    byId("load-error").textContent = `Could not load: ${error.message}`;
  }

  async function start() {
    stop();
    jobs.clear();
    rows.replaceChildren();
    listed = false;
    reorder(); // "Loading jobs…" until the list answers
    byId("sign-in").hidden = true;
    byId("dashboard").hidden = false;
    setConnection("connecting", "Connecting…");
    try {
      await loadStats(); // a 401 here means a token is needed: show the form before opening a stream
      signedIn = true;
    } catch (error) {
      failed(error);
      return;
    }
    const mine = generation;
    openStream(null);
    // Registrations are not events: a periodic reload shows jobs registered but not reported on yet.
    timers.push(setInterval(() => mine === generation && loadJobs().then(loadStats).catch(failed), REFRESH_MS));
    timers.push(setInterval(refreshTimes, 5000));
  }

  function refreshTimes() {
    for (const { job, row } of jobs.values()) {
      for (const element of row.querySelectorAll("time")) element.textContent = ago(element.dateTime);
      row.querySelector(".elapsed").textContent = duration(job);
    }
  }

  byId("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = byId("token");
    const error = byId("sign-in-error");
    error.textContent = "";
    let response;
    try {
      response = await fetch("/api/session", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token: input.value }),
        credentials: "same-origin",
      });
    } catch (failure) {
      error.textContent = `Could not reach the gateway: ${failure.message}`;
      return;
    }
    if (!response.ok) {
      error.textContent = response.status === 401 ? "Wrong token." : `Sign-in failed: HTTP ${response.status}`;
      input.select();
      return;
    }
    input.value = "";
    const session = await response.json();
    await start();
    byId("sign-out").hidden = !session.token_required;
  });

  byId("sign-out").addEventListener("click", async () => {
    await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
    jobs.clear();
    rows.replaceChildren();
    showSignIn("Signed out.");
  });

  start();
})();
