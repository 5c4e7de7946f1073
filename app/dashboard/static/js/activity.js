// The audit log, newest first, page by page.

import { Q } from "./api.js";
import { pager } from "./detail.js";
import { byId, h, keepFocus, replaceChildren } from "./dom.js";
import { absolute } from "./format.js";
import { timeElement } from "./jobs.js";

const PAGE_SIZE = 25;

export class ActivityView {
  constructor({ api, onError }) {
    this.api = api;
    this.onError = onError;
    this.body = byId("activity-body");
    this.pagerBox = byId("activity-pager");
    this.offset = 0;
  }

  async load(offset = this.offset) {
    this.offset = offset;
    let page;
    try {
      page = (await this.api.request(Q.activity, { limit: PAGE_SIZE, offset })).activity;
    } catch (error) {
      this.onError(error);
      return;
    }
    replaceChildren(this.body, ...page.logs.map((entry) => h("tr", {},
      h("td", { dataset: { label: "When" } }, timeElement(entry.createdAt), h("span", { class: "absolute", text: absolute(entry.createdAt) })),
      h("td", { dataset: { label: "Event" } }, h("code", { text: entry.event })),
      h("td", { dataset: { label: "Job" }, text: entry.jobId ?? "—" }),
      h("td", { dataset: { label: "Actor" }, text: entry.actor }),
      h("td", { dataset: { label: "Details" } }, h("code", { class: "details", text: JSON.stringify(entry.details) })),
    )));
    if (!page.logs.length) replaceChildren(this.body, h("tr", {}, h("td", { colSpan: 5, class: "muted", text: "Nothing yet." })));
    keepFocus(this.pagerBox, () => replaceChildren(this.pagerBox, pager(page, (next) => this.load(next))));
  }
}
