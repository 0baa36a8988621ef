// The API's errors: each carries its HTTP status and OpenAI's error object, so the one place
// that writes responses (server.ts) turns any of them into
// `{"error": {"message", "type", "param", "code"}}` with the right status.

export type ApiErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'server_error';

export interface OpenAiErrorBody {
  error: { message: string; type: ApiErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: ApiErrorType,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
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

export function modelNotFound(model: string, served: string): ApiError {
  return new ApiError(404, 'invalid_request_error', 'model_not_found', `The model '${model}' does not exist: this herd serves '${served}'`, 'model');
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
