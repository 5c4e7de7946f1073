// "New job": a form drawn from the job type's JSON Schema (jobTypes), with the API's per-field errors.

import { Q } from "./api.js";
import { byId, h, replaceChildren } from "./dom.js";

// Errors that come without `details` still belong to one field.
const FIELD_OF_CODE = {
  invalid_job_id: "id",
  invalid_interval: "interval",
  invalid_schedule: "schedule",
  invalid_timezone: "timezone",
  unknown_job_type: "type",
  payload_refused: "payload",
  job_exists: "id",
};

export function humanize(name) {
  const words = name.replace(/_/g, " ").replace(/([a-z0-9])([A-Z])/g, "$1 $2").toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** What kind of control a property of the payload schema gets. */
export function controlKind(schema) {
  const options = schema.anyOf?.filter((s) => s.type !== "null") ?? [schema];
  const only = options.length === 1 ? options[0] : null;
  if (!only) return "json";
  if (only.enum) return "enum";
  if (only.type === "integer" || only.type === "number") return only.type;
  if (only.type === "boolean") return "boolean";
  if (only.type === "string") return "string";
  return "json";
}

export class CreateJobForm {
  constructor({ api, onCreated, onError }) {
    this.api = api;
    this.dialog = byId("create-dialog");
    this.form = byId("create-form");
    this.onCreated = onCreated;
    this.onError = onError;
    this.types = null;
    this.fields = new Map(); // API field name -> {input, error}
    this.payloadFields = [];
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  async open() {
    try {
      this.types ??= (await this.api.request(Q.jobTypes)).jobTypes;
    } catch (error) {
      this.onError(error);
      return;
    }
    this.build();
    this.dialog.showModal();
    this.fields.get("type").input.focus();
  }

  field(name, label, input, hint) {
    const id = `new-${name.replace(/\W/g, "-")}`;
    input.id = id;
    input.name = name;
    const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
    const hintNode = hint ? h("p", { class: "hint", id: `${id}-hint`, text: hint }) : null;
    input.setAttribute("aria-describedby", [hintNode?.id, error.id].filter(Boolean).join(" "));
    this.fields.set(name, { input, error });
    const labelled = input.type === "checkbox"
      ? h("label", { class: "check", for: id }, input, ` ${label}`)
      : [h("label", { for: id, text: label }), input];
    return h("div", { class: "field", dataset: { field: name } }, labelled, hintNode, error);
  }

  build() {
    this.fields.clear();
    const typeSelect = h("select", { required: true },
      h("option", { value: "", text: "Choose a type…" }),
      ...this.types.map((t) => h("option", { value: t.name, text: t.name })));
    this.payloadBox = h("fieldset", { class: "payload-fields" });
    this.typeHint = h("p", { class: "hint" });
    typeSelect.addEventListener("change", () => this.drawPayload(typeSelect.value));
    const kind = (value, label, checked) => h("label", { class: "check" },
      h("input", { type: "radio", name: "when", value, checked }), ` ${label}`);
    const whenBox = h("fieldset", { class: "when" }, h("legend", { text: "When it runs" }),
      h("div", { class: "radios" }, kind("interval", "Every interval", true), kind("schedule", "Cron schedule", false)),
      this.field("interval", "Interval", h("input", { type: "text", placeholder: "5m", autocomplete: "off" }),
        "A Go duration: 90s, 5m, 1h30m, 24h"),
      this.field("schedule", "Schedule", h("input", { type: "text", placeholder: "0 */6 * * *", autocomplete: "off" }),
        "Five cron fields, @hourly / @daily / @weekly / @monthly / @yearly, or @every 10m"));
    whenBox.addEventListener("change", () => this.showWhen());
    this.formError = h("p", { class: "error form-error", role: "alert" });
    replaceChildren(this.form,
      this.field("type", "Job type", typeSelect),
      this.typeHint,
      this.field("id", "ID", h("input", { type: "text", autocomplete: "off", spellcheck: "false" }),
        "Lowercase letters and digits in words joined by hyphens, e.g. nightly-report"),
      this.field("name", "Name", h("input", { type: "text", autocomplete: "off" })),
      this.field("description", "Description", h("input", { type: "text", autocomplete: "off" })),
      whenBox,
      this.field("timezone", "Time zone (optional)", h("input", { type: "text", placeholder: "Europe/Paris", autocomplete: "off" })),
      this.field("timeout", "Timeout in seconds (optional)", h("input", { type: "number", min: "1", step: "any" })),
      this.field("enabled", "Enabled (schedule the first run at once)", h("input", { type: "checkbox", checked: true })),
      this.payloadBox,
      this.formError,
      h("div", { class: "buttons" },
        h("button", { type: "button", class: "quiet", "data-close": true, text: "Cancel" }),
        h("button", { type: "submit", text: "Create job" })));
    this.drawPayload("");
    this.showWhen();
  }

  showWhen() {
    const when = this.form.querySelector("input[name=when]:checked").value;
    for (const name of ["interval", "schedule"]) {
      const { input } = this.fields.get(name);
      input.closest(".field").hidden = name !== when;
      input.disabled = name !== when;
    }
  }

  drawPayload(typeName) {
    for (const name of [...this.fields.keys()]) if (name.startsWith("payload")) this.fields.delete(name);
    this.payloadFields = [];
    const type = this.types.find((t) => t.name === typeName);
    this.typeHint.textContent = type ? type.description : "";
    const payloadError = h("p", { class: "field-error", id: "new-payload-error", hidden: true });
    this.fields.set("payload", { input: this.payloadBox, error: payloadError });
    const children = [h("legend", { text: "Payload" }), payloadError];
    if (!type) children.push(h("p", { class: "muted", text: "Choose a type to see its settings." }));
    const schema = type?.payloadSchema ?? {};
    const required = new Set(schema.required ?? []);
    const properties = Object.entries(schema.properties ?? {});
    if (type && !properties.length) children.push(h("p", { class: "muted", text: "This type takes no settings." }));
    for (const [name, property] of properties) {
      const kind = controlKind(property);
      const label = `${humanize(name)}${required.has(name) ? "" : " (optional)"}`;
      const input = payloadInput(kind, property);
      this.payloadFields.push({ name, kind, input, required: required.has(name) });
      children.push(this.field(`payload.${name}`, label, input, property.description));
    }
    replaceChildren(this.payloadBox, ...children);
  }

  clearErrors() {
    this.formError.textContent = "";
    for (const { input, error } of this.fields.values()) {
      error.hidden = true;
      error.textContent = "";
      input.removeAttribute("aria-invalid");
    }
  }

  showError(field, message) {
    const target = this.fields.get(field);
    if (!target || target.input.disabled) {
      this.formError.textContent = this.formError.textContent ? `${this.formError.textContent} ${message}` : message;
      return;
    }
    target.error.textContent = message;
    target.error.hidden = false;
    target.input.setAttribute("aria-invalid", "true");
  }

  /** The createJob input, or null (with the errors shown) when a value cannot even be read. */
  collect() {
    const value = (name) => this.fields.get(name).input.value.trim();
    const input = { type: value("type"), id: value("id"), name: value("name"), enabled: this.fields.get("enabled").input.checked };
    if (value("description")) input.description = value("description");
    const when = this.form.querySelector("input[name=when]:checked").value;
    input[when] = value(when);
    if (value("timezone")) input.timezone = value("timezone");
    const timeout = this.fields.get("timeout").input;
    if (timeout.validity.badInput) this.showError("timeout", "Enter a number of seconds.");
    else if (timeout.value !== "") input.timeout = Number(timeout.value);
    input.payload = {};
    let readable = !timeout.validity.badInput;
    for (const field of this.payloadFields) {
      const read = readPayloadValue(field);
      if (read.error) {
        this.showError(`payload.${field.name}`, read.error);
        readable = false;
      } else if (read.value !== undefined) input.payload[field.name] = read.value;
    }
    return readable ? input : null;
  }

  async submit() {
    this.clearErrors();
    const input = this.collect();
    if (!input) return;
    const submit = this.form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const { createJob } = await this.api.request(Q.createJob, { input });
      this.dialog.close();
      this.onCreated(createJob);
    } catch (error) {
      if (error.isAuthFailure || error.code === "NETWORK") return this.onError(error);
      this.showApiError(error);
    } finally {
      submit.disabled = false;
    }
  }

  showApiError(error) {
    const details = Array.isArray(error.details) ? error.details : [];
    if (details.length) for (const d of details) this.showError(d.field || "form", d.message);
    else this.showError(FIELD_OF_CODE[error.error] ?? "form", error.message);
    this.form.querySelector("[aria-invalid=true]")?.focus();
  }
}

function payloadInput(kind, property) {
  const initial = property.default;
  switch (kind) {
    case "boolean":
      return h("input", { type: "checkbox", checked: initial === true });
    case "enum":
      return h("select", {}, ...property.enum.map((v) => h("option", { value: String(v), text: String(v), selected: v === initial })));
    case "integer":
    case "number":
      return h("input", { type: "number", step: kind === "integer" ? "1" : "any", value: initial ?? "" });
    case "string":
      return h("input", { type: "text", value: initial ?? "", autocomplete: "off" });
    default:
      return h("textarea", { rows: 2, spellcheck: "false", text: initial === undefined ? "" : JSON.stringify(initial) });
  }
}

/** {value} to send, {value: undefined} to leave to the type's default, or {error}. */
export function readPayloadValue({ kind, input, required }) {
  if (kind === "boolean") return { value: input.checked };
  if (kind === "number" || kind === "integer") {
    if (input.validity.badInput) return { error: "Enter a number." };
    return input.value === "" ? { value: undefined } : { value: Number(input.value) };
  }
  const text = input.value;
  if (text.trim() === "") return { value: required && kind === "string" ? "" : undefined };
  if (kind !== "json") return { value: text };
  try {
    return { value: JSON.parse(text) };
  } catch {
    return { error: "Enter a JSON value, e.g. 200 or [200, 204]." };
  }
}
