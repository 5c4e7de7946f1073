// The jobs table: one row per job, updated in place (focus stays where it is) whenever a state arrives.

import { byId, h, replaceChildren } from "./dom.js";
import { duration, relative } from "./format.js";
import { describeSchedule } from "./schedule.js";

export function timeElement(iso, empty = "—") {
  if (!iso) return h("span", { class: "muted", text: empty });
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString(), dataset: { relative: iso }, text: relative(iso) });
}

export function resultBadge(result) {
  if (!result) return null;
  const kind = result === "success" ? "success" : result === "error" ? "error" : "other";
  return h("span", { class: `badge result result-${kind}`, text: result });
}

export function scheduleCell(schedule) {
  const words = describeSchedule(schedule);
  return [h("span", { class: "schedule-words", text: words }), words === schedule ? null : h("code", { class: "schedule-raw", text: schedule })];
}

export class JobsTable {
  constructor({ onToggle, onRun, onOpen }) {
    this.body = byId("jobs-body");
    this.rows = new Map();
    this.deleted = new Set(); // deleted here: a state of it still on its way must not bring the row back
    this.actions = { onToggle, onRun, onOpen };
  }

  replaceAll(jobs) {
    this.deleted.clear();
    const ids = new Set(jobs.map((j) => j.id));
    for (const id of [...this.rows.keys()]) if (!ids.has(id)) this.remove(id);
    for (const job of jobs) this.upsert(job);
  }

  upsert(job) {
    if (this.deleted.has(job.id)) return;
    let row = this.rows.get(job.id);
    if (!row) {
      row = this.createRow(job);
      this.rows.set(job.id, row);
      this.insertSorted(row, job.name);
    }
    this.fill(row, job);
  }

  remove(id) {
    this.rows.get(id)?.tr.remove();
    this.rows.delete(id);
  }

  /** The job was deleted by this page. */
  forget(id) {
    this.remove(id);
    this.deleted.add(id);
  }

  /** The job was created by this page (perhaps again, with an id deleted before). */
  add(job) {
    this.deleted.delete(job.id);
    this.upsert(job);
  }

  insertSorted(row, name) {
    const after = [...this.rows.values()].find((r) => r !== row && r.tr.isConnected && r.name.localeCompare(name) > 0);
    row.name = name;
    this.body.insertBefore(row.tr, after ? after.tr : null);
  }

  createRow(job) {
    const cell = (label, cls) => h("td", { class: cls, dataset: { label } });
    const toggle = h("input", { type: "checkbox", role: "switch", class: "switch" });
    const run = h("button", { type: "button", class: "run-now", text: "Run now" });
    const open = h("button", { type: "button", class: "quiet details", text: "Details" });
    const row = {
      job,
      name: job.name,
      tr: h("tr", { dataset: { jobId: job.id } }),
      nameCell: cell("Name", "name"),
      typeCell: cell("Type", "type"),
      scheduleCell: cell("Schedule", "schedule"),
      enabledCell: cell("Enabled", "enabled"),
      statusCell: cell("Status", "status"),
      lastCell: cell("Last run", "last-run"),
      nextCell: cell("Next run", "next-run"),
      actionsCell: h("td", { class: "actions" }, run, open),
      toggle,
      run,
      open,
    };
    row.enabledCell.append(h("label", { class: "switch-label" }, toggle, h("span", { class: "switch-text" })));
    toggle.addEventListener("change", () => this.actions.onToggle(row.job, toggle.checked, toggle));
    run.addEventListener("click", () => this.actions.onRun(row.job, run));
    open.addEventListener("click", () => this.actions.onOpen(row.job.id));
    row.tr.append(row.nameCell, row.typeCell, row.scheduleCell, row.enabledCell, row.statusCell, row.lastCell,
      row.nextCell, row.actionsCell);
    return row;
  }

  fill(row, job) {
    row.job = job;
    if (row.name !== job.name) this.insertSorted(row, job.name);
    row.tr.dataset.running = String(job.running);
    row.tr.dataset.enabled = String(job.enabled);
    replaceChildren(row.nameCell, h("span", { class: "job-name", text: job.name }), h("span", { class: "job-id", text: job.id }));
    replaceChildren(row.typeCell, h("code", { text: job.type }));
    replaceChildren(row.scheduleCell, ...scheduleCell(job.schedule));
    row.toggle.checked = job.enabled;
    row.toggle.setAttribute("aria-label", `${job.name} enabled`);
    row.enabledCell.querySelector(".switch-text").textContent = job.enabled ? "On" : "Off";
    replaceChildren(row.statusCell, job.running
      ? h("span", { class: "running", text: "Running" })
      : h("span", { class: "idle", text: "Idle" }));
    replaceChildren(row.lastCell, job.lastRun
      ? [timeElement(job.lastRun), " ", resultBadge(job.lastResult), " ", h("span", { class: "duration", text: duration(job.lastDuration) })]
      : h("span", { class: "muted", text: "never" }));
    replaceChildren(row.nextCell, job.nextRun ? timeElement(job.nextRun) : h("span", { class: "muted", text: job.enabled ? "—" : "not scheduled" }));
    row.run.disabled = job.running;
    row.run.setAttribute("aria-label", job.running ? `${job.name} is running` : `Run ${job.name} now`);
    row.open.setAttribute("aria-label", `Details of ${job.name}`);
  }
}

/** Every relative time on the page, refreshed locally: the next run counts down without asking the server. */
export function tickRelativeTimes() {
  const now = Date.now();
  for (const node of document.querySelectorAll("time[data-relative]")) {
    node.textContent = relative(node.dataset.relative, now);
  }
}
