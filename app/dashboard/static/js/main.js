// The dashboard: sign-in, the live jobs table, job details, creation and the activity log, wired together.

import { ActivityView } from "./activity.js";
import { Api, Q } from "./api.js";
import { CreateJobForm } from "./create.js";
import { JobDetail } from "./detail.js";
import { byId } from "./dom.js";
import { JobsTable, tickRelativeTimes } from "./jobs.js";
import { subscribeJobs } from "./live.js";
import { busy, confirmAction, notify, wireDialogs } from "./ui.js";

const TOKEN_KEY = "jobs-gateway.token";
const MAX_TIMER_MS = 2 ** 31 - 1;
const RESTART_DELAY_MS = 1000;
const EXPIRED = "Your token expired. Paste a new one to go on.";

const api = new Api(document.querySelector('meta[name="graphql-endpoint"]').content, null);
const session = { stopLive: null, expiryTimer: null, restartTimer: null };

const table = new JobsTable({ onToggle: toggleJob, onRun: runJob, onOpen: openJob });
const detail = new JobDetail({ api, onRun: runJob, onAction: scheduleAction, onDelete: deleteJob, onError: handleError });
const createForm = new CreateJobForm({ api, onCreated: jobCreated, onError: handleError });
const activity = new ActivityView({ api, onError: handleError });

// --- session ------------------------------------------------------------------------------------------------

/** The token's `exp` (ms since the epoch), read without verifying: the server is the judge, this only warns. */
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

function expired() {
  const exp = tokenExpiry(api.token ?? "");
  return exp !== null && exp <= Date.now();
}

function endSession(forget) {
  session.stopLive?.();
  session.stopLive = null;
  clearTimeout(session.expiryTimer);
  clearTimeout(session.restartTimer);
  if (forget) sessionStorage.removeItem(TOKEN_KEY);
  api.token = null;
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
}

/** Back to the sign-in form. `forget: false` keeps the tab's token, for a server that could not be reached. */
function showSignIn(reason = "", { forget = true } = {}) {
  endSession(forget);
  table.replaceAll([]);
  setConnection({ state: "signed-out" });
  byId("nav").hidden = true;
  byId("sign-out").hidden = true;
  byId("jobs-view").hidden = true;
  byId("activity-view").hidden = true;
  byId("signin-view").hidden = false;
  byId("signin-reason").textContent = reason;
  byId("token").focus();
}

async function signIn(token) {
  api.token = token;
  let jobs;
  try {
    jobs = (await api.request(Q.jobs)).jobs;
  } catch (error) {
    if (error.isAuthFailure) showSignIn(`The server refused this token: ${error.message}`);
    else showSignIn(`${error.message} Press Sign in to try again.`, { forget: false });
    return;
  }
  if (api.token !== token) return; // another sign-in (or a sign-out) came first
  sessionStorage.setItem(TOKEN_KEY, token);
  byId("signin-view").hidden = true;
  byId("nav").hidden = false;
  byId("sign-out").hidden = false;
  byId("token").value = "";
  table.replaceAll(jobs);
  showView("jobs");
  startLive();
  const exp = tokenExpiry(token);
  if (exp !== null) {
    session.expiryTimer = setTimeout(() => showSignIn(EXPIRED),
      Math.min(MAX_TIMER_MS, Math.max(0, exp - Date.now())));
  }
}

function handleError(error) {
  if (error.isAuthFailure) showSignIn(`Signed out: ${error.message}`);
  else notify(error.message, "error");
}

// --- live updates -------------------------------------------------------------------------------------------

const CONNECTION_TEXT = {
  "signed-out": () => "Signed out",
  connecting: () => "Connecting…",
  live: () => "Live",
  reconnecting: (s) => (s.attempt ? `Reconnecting (attempt ${s.attempt})…` : "Reconnecting…"),
  offline: (s) => `Offline${s.reason ? `: ${s.reason}` : ""}`,
};

function setConnection(status) {
  const node = byId("connection");
  node.dataset.state = status.state;
  node.textContent = CONNECTION_TEXT[status.state](status);
}

function startLive() {
  session.stopLive?.();
  if (!api.token) return;
  session.stopLive = subscribeJobs({
    endpoint: api.endpoint,
    token: api.token,
    onStatus: setConnection,
    onJob: jobChanged,
    onDeleted: jobDeletedElsewhere,
    onConnected: catchUp,
    onRefused: (reason) => showSignIn(expired() || /expired/i.test(reason)
      ? EXPIRED
      : `The server refused the live connection: ${reason}`),
    onEnded: () => {
      if (expired()) showSignIn(EXPIRED);
      else session.restartTimer = setTimeout(startLive, RESTART_DELAY_MS); // ended by the server: start again, calmly
    },
  });
}

/** After every (re)connection: whatever changed while the socket was down. */
async function catchUp() {
  try {
    const { jobs } = await api.request(Q.jobs);
    if (!api.token) return; // signed out meanwhile
    table.replaceAll(jobs);
    const open = detail.openJobId;
    const job = open && table.rows.get(open)?.job;
    if (job) detail.update(job);
  } catch (error) {
    handleError(error);
  }
}

function jobChanged(job) {
  table.upsert(job);
  if (detail.openJobId === job.id) detail.update(job);
}

/** Another client deleted a job: its row goes, and so does its dialog if it is open. */
function jobDeletedElsewhere(id) {
  const job = table.rows.get(id)?.job;
  if (!job) return; // deleted by this page (already gone) or never shown
  table.forget(id);
  if (detail.openJobId === id) byId("job-dialog").close();
  notify(`${job.name} was deleted by another client.`);
}

// --- actions ------------------------------------------------------------------------------------------------

async function toggleJob(job, enabled, toggle) {
  // Not `disabled` while saving: a disabled control drops the keyboard focus.
  toggle.setAttribute("aria-busy", "true");
  try {
    jobChanged((await api.request(Q.updateJob, { id: job.id, enabled })).updateJob);
  } catch (error) {
    toggle.checked = job.enabled;
    handleError(error);
  } finally {
    toggle.removeAttribute("aria-busy");
  }
}

async function runJob(job, button) {
  button.disabled = true;
  try {
    const { result } = await api.request(Q.triggerJob, { id: job.id });
    jobChanged(result.job);
    notify(`${job.name}: run requested.`);
  } catch (error) {
    if (error.code === "CONFLICT") {
      notify(`${job.name} is already running; it can run again once this run has finished.`);
      await refreshJob(job.id); // this page had missed the run: show it
    } else handleError(error);
  } finally {
    button.disabled = table.rows.get(job.id)?.job.running ?? false;
  }
}

async function refreshJob(id) {
  try {
    const { job } = await api.request(Q.job, { id });
    if (job) jobChanged(job);
  } catch (error) {
    handleError(error);
  }
}

async function scheduleAction(mutation, job, button) {
  try {
    const { result } = await busy(button, () => api.request(Q[mutation], { id: job.id }));
    jobChanged(result.job);
    notify(`${job.name}: ${result.message}.`);
  } catch (error) {
    handleError(error);
  }
}

async function deleteJob(job) {
  const sure = await confirmAction({
    title: `Delete ${job.name}?`,
    text: `The job ${job.id} and its pending run are removed; its past runs stay in the logs.`,
    action: "Delete job",
  });
  if (!sure) return;
  try {
    await api.request(Q.deleteJob, { id: job.id });
    byId("job-dialog").close();
    table.forget(job.id);
    notify(`${job.name} was deleted.`);
  } catch (error) {
    handleError(error);
  }
}

function openJob(id) {
  const job = table.rows.get(id)?.job;
  if (job) detail.open(job);
}

function jobCreated(job) {
  table.add(job);
  notify(`${job.name} was created.`);
  table.rows.get(job.id)?.open.focus();
}

// --- views --------------------------------------------------------------------------------------------------

function showView(name) {
  for (const view of ["jobs", "activity"]) {
    byId(`${view}-view`).hidden = view !== name;
    const tab = byId(`tab-${view}`);
    if (view === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (name === "activity") activity.load(0);
}

function start() {
  wireDialogs();
  byId("tab-jobs").addEventListener("click", () => showView("jobs"));
  byId("tab-activity").addEventListener("click", () => showView("activity"));
  byId("new-job").addEventListener("click", () => createForm.open());
  byId("sign-out").addEventListener("click", () => showSignIn("You signed out."));
  byId("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    // An empty field retries with the token this tab already holds (kept when the server was unreachable).
    const token = byId("token").value.trim().replace(/^Bearer\s+/i, "") || sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token);
    else byId("signin-reason").textContent = "Paste a token first.";
  });
  setInterval(tickRelativeTimes, 1000);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showSignIn();
}

start();
