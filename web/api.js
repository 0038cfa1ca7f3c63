// The HTTP API, by paths relative to the page: the app works mounted under any prefix.

/** An API answer that was not 2xx, with the server's `{"error": {"code", "message"}}`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const enc = encodeURIComponent;
export const jobPath = (id) => `api/jobs/${enc(id)}`;

/** A query string from the non-empty values of `params` ("" when none). */
export function query(params) {
  const parts = Object.entries(params)
    .filter(([, value]) => value != null && value !== "")
    .map(([key, value]) => `${enc(key)}=${enc(value)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

/** JSON from a relative path (null for 204); throws ApiError with the server's message. */
export async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Accept: "application/json", ...options.headers },
    credentials: "same-origin",
  });
  let body = null;
  if (response.status !== 204) {
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || `HTTP ${response.status}`);
  }
  return body;
}

/** A mutating request: always JSON (the server refuses other bodies with 415). */
export function send(method, path, body) {
  return api(path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}
