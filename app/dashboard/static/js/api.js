// GraphQL over HTTP with the bearer token; errors keep the API's code, message and per-field details.

export class ApiError extends Error {
  constructor(message, { code = "INTERNAL", error = null, details = null } = {}) {
    super(message);
    this.code = code; // extensions.code: UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, BAD_USER_INPUT, CONFLICT, ...
    this.error = error; // the REST error code, e.g. already_running
    this.details = details; // [{field, message}] for bad input
  }

  get isAuthFailure() {
    return this.code === "UNAUTHENTICATED" || this.code === "FORBIDDEN";
  }
}

export class Api {
  constructor(endpoint, token) {
    this.endpoint = endpoint;
    this.token = token;
  }

  async request(query, variables = {}) {
    let response;
    try {
      response = await fetch(this.endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.token}` },
        body: JSON.stringify({ query, variables }),
        credentials: "omit",
      });
    } catch {
      throw new ApiError("The server cannot be reached.", { code: "NETWORK" });
    }
    const body = await response.json().catch(() => null);
    const first = body?.errors?.[0];
    if (first) {
      const ext = first.extensions ?? {};
      throw new ApiError(first.message, { code: ext.code, error: ext.error, details: ext.details });
    }
    if (!response.ok || !body?.data) {
      throw new ApiError(body?.message ?? `The server answered ${response.status}.`, {
        code: response.status === 401 ? "UNAUTHENTICATED" : "HTTP",
      });
    }
    for (const answer of Object.values(body.data)) {
      const outcome = userError(answer);
      if (outcome) throw outcome;
    }
    return body.data;
  }
}

// A mutation (and a query with arguments) answers its expected failures as data, a UserError member of its
// union: the same ApiError as a top-level error, so that callers handle both alike. A refused permission is
// not a failed sign-in.
const USER_ERROR_CODES = {
  JobNotFound: "NOT_FOUND",
  ValidationFailed: "BAD_USER_INPUT",
  PermissionDenied: "PERMISSION_DENIED",
  AlreadyRunning: "CONFLICT",
  NotRunning: "CONFLICT",
  JobConflict: "CONFLICT",
  IdempotencyConflict: "CONFLICT",
  VersionConflict: "PRECONDITION_FAILED",
};

function userError(answer) {
  const code = answer && USER_ERROR_CODES[answer.__typename];
  if (!code) return null;
  return new ApiError(answer.message, { code, error: answer.code, details: answer.fields ?? null });
}

// Asked of every union answer: which member it is, and a UserError's code, message and fields.
const OUTCOME = "__typename ... on UserError { code message } ... on ValidationFailed { fields { field message } }";

export const JOB_FIELDS = `id name description enabled running schedule lastRun nextRun lastResult lastDuration
  type payload timezone timeout builtin`;
export const RUN_FIELDS = "id jobId startedAt completedAt duration result triggeredBy details";

export const Q = {
  jobs: `query Jobs { jobs { ${JOB_FIELDS} } }`,
  job: `query Job($id: ID!) { job(id: $id) { ${JOB_FIELDS} } }`,
  jobTypes: "query JobTypes { jobTypes { name description payloadSchema } }",
  runs: `query JobRuns($jobId: ID!, $limit: Int!, $offset: Int!, $chart: Int!) {
    page: jobLogs(jobId: $jobId, limit: $limit, offset: $offset) {
      ${OUTCOME} ... on JobLogPage { total limit offset logs { ${RUN_FIELDS} } }
    }
    recent: jobLogs(jobId: $jobId, limit: $chart, offset: 0) {
      ${OUTCOME} ... on JobLogPage { logs { id startedAt duration result } }
    }
  }`,
  activity: `query Activity($limit: Int!, $offset: Int!) {
    activity(limit: $limit, offset: $offset) {
      ${OUTCOME} ... on ActivityPage { total limit offset logs { id event jobId actor details createdAt } }
    }
  }`,
  updateJob: `mutation UpdateJob($id: ID!, $enabled: Boolean!) {
    updateJob(id: $id, enabled: $enabled) { ${OUTCOME} ... on Job { ${JOB_FIELDS} } }
  }`,
  startJob: `mutation StartJob($id: ID!) {
    result: startJob(id: $id) { ${OUTCOME} ... on JobActionResult { message job { ${JOB_FIELDS} } } }
  }`,
  stopJob: `mutation StopJob($id: ID!) {
    result: stopJob(id: $id) { ${OUTCOME} ... on JobActionResult { message job { ${JOB_FIELDS} } } }
  }`,
  triggerJob: `mutation TriggerJob($id: ID!) {
    result: triggerJob(id: $id) { ${OUTCOME} ... on JobActionResult { message job { ${JOB_FIELDS} } } }
  }`,
  createJob: `mutation CreateJob($input: CreateJobInput!) {
    createJob(input: $input) { ${OUTCOME} ... on Job { ${JOB_FIELDS} } }
  }`,
  deleteJob: `mutation DeleteJob($id: ID!) { deleteJob(id: $id) { ${OUTCOME} ... on JobDeleted { id } } }`,
  jobStatus: `subscription JobStatus { jobStatus { ${JOB_FIELDS} } }`,
  jobDeleted: "subscription JobDeleted { jobDeleted }",
};
