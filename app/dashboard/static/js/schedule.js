// A schedule in words: "0 */6 * * *" is "every 6 hours", "@every 1m" is "every minute". Anything that
// cannot be said simply is returned as it is written: the raw text is never wrong.

const DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const MONTHS = [
  "January", "February", "March", "April", "May", "June",
  "July", "August", "September", "October", "November", "December",
];
const MACROS = {
  "@hourly": "every hour",
  "@daily": "every day at 00:00",
  "@midnight": "every day at 00:00",
  "@weekly": "every Sunday at 00:00",
  "@monthly": "on day 1 of every month at 00:00",
  "@yearly": "every year on 1 January at 00:00",
  "@annually": "every year on 1 January at 00:00",
};
const GO_UNITS = { ns: 1e-9, us: 1e-6, "µs": 1e-6, "μs": 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };

export function describeSchedule(raw) {
  const text = String(raw ?? "").trim();
  const lower = text.toLowerCase();
  if (MACROS[lower]) return MACROS[lower];
  if (lower.startsWith("@every ")) return describeEvery(text.slice(7).trim()) ?? text;
  const fields = text.split(/\s+/);
  return (fields.length === 5 && describeCron(fields)) || text;
}

export function goDurationSeconds(text) {
  if (!/^(\d+(\.\d+)?(ns|us|µs|μs|ms|s|m|h))+$/.test(text)) return null;
  let total = 0;
  for (const [, number, , unit] of text.matchAll(/(\d+(\.\d+)?)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(number) * GO_UNITS[unit];
  }
  return total;
}

function describeEvery(text) {
  const seconds = goDurationSeconds(text);
  if (seconds === null || seconds < 1 || !Number.isInteger(seconds)) return null;
  if (seconds % 3600 === 0) return every(seconds / 3600, "hour");
  if (seconds % 60 === 0) return every(seconds / 60, "minute");
  return every(seconds, "second");
}

function every(count, unit) {
  return count === 1 ? `every ${unit}` : `every ${count} ${unit}s`;
}

const number = (field, max) => (/^\d+$/.test(field) && Number(field) <= max ? Number(field) : null);
const step = (field) => (/^(\*|0)\/\d+$/.test(field) ? Number(field.split("/")[1]) : null);
const pad = (n) => String(n).padStart(2, "0");

function describeCron([minute, hour, day, month, weekday]) {
  const m = number(minute, 59);
  const h = number(hour, 23);
  const anyDate = day === "*" && month === "*" && weekday === "*";
  if (anyDate && hour === "*") {
    if (minute === "*") return "every minute";
    if (step(minute)) return every(step(minute), "minute");
    if (m !== null) return m === 0 ? "every hour" : `every hour at minute ${m}`;
    return null;
  }
  if (m === null) return null;
  if (anyDate && step(hour)) {
    const base = every(step(hour), "hour");
    return m === 0 ? base : `${base} at minute ${m}`;
  }
  if (h === null) return null;
  const at = `at ${pad(h)}:${pad(m)}`;
  if (anyDate) return `every day ${at}`;
  if (day === "*" && month === "*") {
    const days = describeWeekdays(weekday);
    return days && `${days} ${at}`;
  }
  const d = number(day, 31);
  if (d === null || d === 0 || weekday !== "*") return null;
  if (month === "*") return `on day ${d} of every month ${at}`;
  const mo = number(month, 12);
  return mo ? `every year on ${d} ${MONTHS[mo - 1]} ${at}` : null;
}

function describeWeekdays(field) {
  if (field === "1-5") return "every weekday (Monday to Friday)";
  const single = number(field, 7);
  if (single !== null) return `every ${DAYS[single]}`;
  if (/^\d(,\d)+$/.test(field) && field.split(",").every((f) => Number(f) <= 7)) {
    const names = field.split(",").map((f) => DAYS[Number(f)]);
    return `every ${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
  }
  return null;
}
