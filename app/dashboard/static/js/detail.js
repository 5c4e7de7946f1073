// One job in a dialog: its settings, schedule controls, recent durations and its runs, page by page.

import { Q } from "./api.js";
import { durationChart } from "./chart.js";
import { byId, h, keepFocus, replaceChildren } from "./dom.js";
import { absolute, duration } from "./format.js";
import { resultBadge, scheduleCell, timeElement } from "./jobs.js";

const PAGE_SIZE = 10;
const CHART_RUNS = 30;

export class JobDetail {
  constructor({ api, onRun, onAction, onDelete, onError }) {
    this.api = api;
    this.dialog = byId("job-dialog");
    this.body = byId("job-dialog-body");
    this.actions = { onRun, onAction, onDelete, onError };
    this.job = null;
    this.offset = 0;
    this.loading = 0;
    this.dialog.addEventListener("close", () => {
      this.job = null;
    });
  }

  get openJobId() {
    return this.dialog.open && this.job ? this.job.id : null;
  }

  open(job) {
    this.job = job;
    this.offset = 0;
    this.summary = h("div", { class: "summary" });
    this.controls = h("div", { class: "buttons" });
    this.chart = h("figure", { class: "chart-box" });
    this.runs = h("div", { class: "runs", "aria-live": "polite", "aria-busy": "true" });
    replaceChildren(this.body, this.summary, this.controls,
      h("h3", { text: "Recent durations" }), this.chart, h("h3", { text: "Runs" }), this.runs);
    this.render(job);
    if (!this.dialog.open) this.dialog.showModal();
    this.loadRuns();
  }

  /** A new state for the open job: redraw it, and reload its runs when a run started or finished. */
  update(job) {
    const previous = this.job;
    this.render(job);
    if (previous.running !== job.running || previous.lastRun !== job.lastRun) this.loadRuns();
  }

  render(job) {
    this.job = job;
    byId("job-dialog-title").textContent = job.name;
    const row = (label, ...value) => [h("dt", { text: label }), h("dd", {}, ...value)];
    replaceChildren(this.summary,
      job.description ? h("p", { class: "description", text: job.description }) : null,
      h("dl", {},
        row("ID", h("code", { text: job.id })),
        row("Type", h("code", { text: job.type })),
        row("Schedule", ...scheduleCell(job.schedule), job.timezone ? ` (${job.timezone})` : ""),
        row("Schedule state", job.enabled ? "started (enabled)" : "stopped (disabled)"),
        row("Status", job.running ? h("span", { class: "running", text: "Running" }) : "Idle"),
        row("Last run", timeElement(job.lastRun, "never"), " ", resultBadge(job.lastResult), " ", duration(job.lastDuration)),
        row("Next run", timeElement(job.nextRun, "not scheduled")),
        row("Timeout", job.timeout ? `${job.timeout} s` : "default"),
        row("Payload", h("pre", { class: "payload", text: JSON.stringify(job.payload, null, 2) })),
      ));
    const button = (text, cls, handler, disabled = false) => {
      const b = h("button", { type: "button", class: cls, text, disabled });
      b.addEventListener("click", () => handler(b));
      return b;
    };
    keepFocus(this.controls, () => replaceChildren(this.controls,
      button("Start schedule", "quiet", (b) => this.actions.onAction("startJob", job, b), job.enabled),
      button("Stop schedule", "quiet", (b) => this.actions.onAction("stopJob", job, b), !job.enabled),
      button(job.running ? "Running…" : "Run now", "run-now", (b) => this.actions.onRun(job, b), job.running),
      job.builtin ? null : button("Delete…", "danger", (b) => this.actions.onDelete(job, b), job.running),
    ));
  }

  async loadRuns() {
    const job = this.job;
    const ticket = ++this.loading;
    this.runs.setAttribute("aria-busy", "true");
    try {
      const data = await this.api.request(Q.runs, { jobId: job.id, limit: PAGE_SIZE, offset: this.offset, chart: CHART_RUNS });
      if (ticket !== this.loading || this.job?.id !== job.id) return; // a newer load or another job won
      replaceChildren(this.chart, durationChart(data.recent.logs));
      this.renderRuns(data.page);
    } catch (error) {
      if (ticket === this.loading) this.actions.onError(error);
    } finally {
      if (ticket === this.loading) this.runs.setAttribute("aria-busy", "false");
    }
  }

  renderRuns(page) {
    if (!page.total) {
      replaceChildren(this.runs, h("p", { class: "muted", text: "No runs yet." }));
      return;
    }
    const rows = page.logs.map((run) => h("tr", { dataset: { runId: run.id } },
      h("td", { dataset: { label: "Started" } }, timeElement(run.startedAt), h("span", { class: "absolute", text: absolute(run.startedAt) })),
      h("td", { dataset: { label: "Result" } }, run.result ? resultBadge(run.result) : h("span", { class: "running", text: "Running" })),
      h("td", { dataset: { label: "Duration" }, text: duration(run.duration) }),
      h("td", { dataset: { label: "Triggered by" }, text: run.triggeredBy }),
      h("td", { dataset: { label: "Details" } }, run.details
        ? h("details", {}, h("summary", { text: "Details" }), h("pre", { class: "run-details", text: run.details }))
        : h("span", { class: "muted", text: "—" })),
    ));
    const table = h("table", { class: "runs-table" },
      h("thead", {}, h("tr", {}, ...["Started", "Result", "Duration", "Triggered by", "Details"].map((t) => h("th", { scope: "col", text: t })))),
      h("tbody", {}, ...rows));
    keepFocus(this.runs, () => replaceChildren(this.runs, table, pager(page, (offset) => {
      this.offset = offset;
      this.loadRuns();
    })));
  }
}

/** Newer / Older buttons and "11–20 of 57"; shared with the activity view. */
export function pager(page, go) {
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.logs.length;
  const newer = h("button", { type: "button", class: "quiet", text: "Newer", disabled: page.offset === 0 });
  const older = h("button", { type: "button", class: "quiet", text: "Older", disabled: last >= page.total });
  newer.addEventListener("click", () => go(Math.max(0, page.offset - page.limit)));
  older.addEventListener("click", () => go(page.offset + page.limit));
  return h("div", { class: "pager" }, newer, h("span", { class: "range", text: `${first}–${last} of ${page.total}` }), older);
}
