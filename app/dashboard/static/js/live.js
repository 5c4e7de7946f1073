// The jobStatus subscription over graphql-transport-ws, through the vendored graphql-ws client: it
// reconnects with backoff after a restart, and a refused or expired token (close code 4403) ends it.

import { Q } from "./api.js";

const FORBIDDEN = 4403;
const MAX_BACKOFF_SECONDS = 30;

export function websocketUrl(endpoint) {
  const url = new URL(endpoint, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/**
 * Subscribe to every job's changes. Callbacks: onStatus({state, attempt, delay}), onJob(job),
 * onDeleted(id) when any client deletes a job, onConnected() after every (re)connection, so the caller can catch up on what it missed,
 * onRefused(reason) when the server refuses the token or it expires, onEnded() when the server ends the stream.
 */
export function subscribeJobs(callbacks) {
  // Once stopped, nothing this client still reports (its own closing included) reaches the page.
  let active = true;
  const guarded = Object.fromEntries(Object.entries(callbacks).map(([name, fn]) =>
    [name, typeof fn === "function" ? (...args) => active && fn(...args) : fn]));
  const { endpoint, token, onStatus, onJob, onDeleted, onConnected, onRefused, onEnded } = guarded;
  const { createClient } = globalThis.graphqlWs;
  let attempt = 0;
  const client = createClient({
    url: websocketUrl(endpoint),
    connectionParams: () => ({ authorization: `Bearer ${token}` }),
    retryAttempts: Number.POSITIVE_INFINITY,
    shouldRetry: (event) => !(event && event.code === FORBIDDEN),
    retryWait: async (retries) => {
      // 1, 2, 4 ... 30 s, with jitter so that many open dashboards do not return at the same instant.
      const seconds = Math.min(MAX_BACKOFF_SECONDS, 2 ** retries) * (0.75 + Math.random() * 0.5);
      attempt = retries + 1;
      onStatus({ state: "reconnecting", attempt, delay: seconds });
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    },
    on: {
      connecting: () => onStatus({ state: attempt ? "reconnecting" : "connecting", attempt }),
      connected: () => {
        attempt = 0;
        onStatus({ state: "live" });
        onConnected();
      },
      closed: (event) => {
        if (event?.code === FORBIDDEN) onRefused(event.reason || "The server refused the token.");
        else onStatus({ state: "reconnecting", attempt });
      },
    },
  });
  const unsubscribe = client.subscribe(
    { query: Q.jobStatus },
    {
      next: (message) => {
        if (message.data?.jobStatus) onJob(message.data.jobStatus);
        else if (message.errors?.length) onRefused(message.errors[0].message);
      },
      error: (error) => {
        if (error?.code === FORBIDDEN) return; // already reported by `closed`
        const refused = Array.isArray(error) && error.find((e) => ["UNAUTHENTICATED", "FORBIDDEN"].includes(e.extensions?.code));
        if (refused) onRefused(refused.message);
        else onStatus({ state: "offline", reason: error?.reason || error?.message || "the live connection failed" });
      },
      complete: () => onEnded(),
    },
  );
  // Deletions come on their own subscription over the same socket: jobStatus's items are jobs.
  const unsubscribeDeleted = client.subscribe(
    { query: Q.jobDeleted },
    {
      next: (message) => {
        if (message.data?.jobDeleted) onDeleted(message.data.jobDeleted);
      },
      error: () => {}, // the jobStatus subscription above reports the connection's troubles
      complete: () => {},
    },
  );
  return () => {
    active = false;
    unsubscribeDeleted();
    unsubscribe();
    client.dispose();
  };
}
