// The API's errors: each carries its HTTP status and OpenAI's error object, so the one place
// that writes responses (server.ts) turns any of them into
// `{"error": {"message", "type", "param", "code"}}` with the right status. Other errors get
// their status from the table in cluster/errors.ts (toApiError).

import { surfacesOf, type ErrorKind, type KindedError } from '../cluster/errors.ts';

export type ApiErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'not_found_error'
  | 'server_error'
  // OpenAI's type for a 429
  | 'requests';

export interface OpenAiErrorBody {
  error: { message: string; type: ApiErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error implements KindedError {
  constructor(
    readonly status: number,
    readonly type: ApiErrorType,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
    /** Response headers beside the body (Retry-After of a 429). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** For the gRPC surface: a client's error, a busy herd, or ours. */
  get kind(): ErrorKind {
    if (this.status === 503 || this.status === 429) return 'unavailable';
    return this.status >= 400 && this.status < 500 ? 'invalid' : 'internal';
  }

  body(): OpenAiErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400: a field is missing, of the wrong type or out of range. */
export function badRequest(message: string, param: string | null = null, code = 'invalid_value'): ApiError {
  return new ApiError(400, 'invalid_request_error', code, message, param);
}

export function unauthorized(message: string): ApiError {
  return new ApiError(401, 'invalid_request_error', 'invalid_api_key', message);
}

/** 415: a POST body that does not say it is JSON (a browser's cross-site form or text/plain post). */
export function unsupportedMediaType(got: string | undefined): ApiError {
  const message = `the request body must be JSON: send "Content-Type: application/json", got ${got ? `"${got}"` : 'none'}`;
  return new ApiError(415, 'invalid_request_error', 'unsupported_media_type', message);
}

/** 429: too many requests wait already; the client may come back after `retryAfterS` seconds. */
export function queueFull(message: string, retryAfterS: number): ApiError {
  return new ApiError(429, 'requests', 'queue_full', message, null, { 'Retry-After': String(retryAfterS) });
}

export function modelNotFound(model: string, served: string): ApiError {
  const message = `The model '${model}' does not exist: this herd serves '${served}'`;
  return new ApiError(404, 'invalid_request_error', 'model_not_found', message, 'model');
}

export function notFound(message: string): ApiError {
  return new ApiError(404, 'invalid_request_error', 'not_found', message);
}

/** 503: no model or cluster is ready to take the request. */
export function unavailable(message: string, code = 'cluster_unavailable'): ApiError {
  return new ApiError(503, 'server_error', code, message);
}

export function internal(message: string): ApiError {
  return new ApiError(500, 'server_error', 'internal_error', message);
}

/**
 * Every error a request can meet, as the status and OpenAI error object the client gets. A
 * context overflow and a template that refuses the conversation are about `messages`.
 */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  const message = e instanceof Error ? e.message : String(e);
  const name = e instanceof Error ? e.name : '';
  const { http } = surfacesOf(e);
  if (http === 400) {
    const param = name === 'ContextError' || name === 'ChatTemplateError' ? 'messages' : null;
    return badRequest(message, param, name === 'ContextError' ? 'context_length_exceeded' : 'invalid_value');
  }
  if (http === 503) return unavailable(message);
  return internal(message);
}
