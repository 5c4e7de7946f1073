// Recent run durations as bars, oldest on the left, coloured by result; built with DOM APIs.

import { svg } from "./dom.js";
import { absolute, duration } from "./format.js";

const WIDTH = 320;
const HEIGHT = 80;

export function durationChart(runs) {
  const finished = runs.filter((r) => r.duration !== null && r.result !== null).reverse();
  const title = `Durations of the last ${finished.length} finished runs`;
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  chart.append(svg("title", {}, title));
  if (!finished.length) {
    chart.append(svg("text", { x: 8, y: HEIGHT / 2, class: "chart-empty" }, "No finished runs yet"));
    return chart;
  }
  const longest = Math.max(1, ...finished.map((r) => r.duration));
  const slot = WIDTH / Math.max(finished.length, 10);
  finished.forEach((run, i) => {
    const height = Math.max(2, (run.duration / longest) * (HEIGHT - 4));
    const bar = svg("rect", {
      x: (i * slot + 1).toFixed(1),
      y: (HEIGHT - height).toFixed(1),
      width: Math.max(1, slot - 2).toFixed(1),
      height: height.toFixed(1),
      class: `bar result-${run.result === "success" ? "success" : run.result === "error" ? "error" : "other"}`,
    });
    bar.append(svg("title", {}, `${absolute(run.startedAt)}: ${run.result}, ${duration(run.duration)}`));
    chart.append(bar);
  });
  return chart;
}
