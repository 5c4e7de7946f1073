// Building DOM nodes from data. Text always goes in through textContent (text nodes), never as markup:
// job names, payloads and run details are data, whatever characters they hold.

export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = String(value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function replaceChildren(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  append(node, children);
  return node;
}

export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from the page`);
  return node;
}

/**
 * Redraw `container` without losing the keyboard focus: when it held the focus, the control with the same
 * text gets it back, or else an enabled neighbour of the control that had it (the other pager button).
 */
export function keepFocus(container, redraw) {
  const active = document.activeElement;
  if (!container.contains(active)) return redraw();
  const key = active.textContent;
  const group = active.parentElement?.className;
  redraw();
  if (container.contains(document.activeElement)) return;
  const controls = [...container.querySelectorAll("button, input, select, textarea, summary")].filter((c) => !c.disabled);
  const neighbours = controls.filter((c) => c.parentElement?.className === group);
  (controls.find((c) => c.textContent === key) ?? neighbours[0] ?? controls[0])?.focus();
}
