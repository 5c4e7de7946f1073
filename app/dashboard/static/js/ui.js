// Notices (announced through an aria-live region), the confirmation dialog and dialog plumbing.

import { byId, h } from "./dom.js";

const NOTICE_SECONDS = 8;

export function notify(message, kind = "info") {
  const list = byId("notices");
  const close = h("button", { type: "button", class: "quiet", "aria-label": "Dismiss", text: "×" });
  const notice = h("div", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : null },
    h("span", { text: message }), close);
  const remove = () => notice.remove();
  close.addEventListener("click", remove);
  setTimeout(remove, NOTICE_SECONDS * 1000);
  list.append(notice);
  while (list.children.length > 4) list.firstElementChild.remove();
}

export function confirmAction({ title, text, action }) {
  const dialog = byId("confirm-dialog");
  byId("confirm-title").textContent = title;
  byId("confirm-text").textContent = text;
  const ok = byId("confirm-ok");
  ok.textContent = action;
  return new Promise((resolve) => {
    const finish = (answer) => {
      ok.removeEventListener("click", yes);
      byId("confirm-cancel").removeEventListener("click", no);
      dialog.removeEventListener("close", no);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = () => finish(true);
    const no = () => finish(false);
    ok.addEventListener("click", yes);
    byId("confirm-cancel").addEventListener("click", no);
    dialog.addEventListener("close", no);
    dialog.showModal();
    byId("confirm-cancel").focus(); // the safe choice has the focus
  });
}

/** Buttons marked data-close close their dialog; Escape already does. */
export function wireDialogs() {
  for (const dialog of document.querySelectorAll("dialog")) {
    dialog.addEventListener("click", (event) => {
      if (event.target.closest("[data-close]")) dialog.close();
    });
  }
}

/** Disable a control while an action runs, and give it back afterwards. */
export async function busy(control, work) {
  const was = control.disabled;
  control.disabled = true;
  control.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    control.removeAttribute("aria-busy");
    control.disabled = was;
  }
}
