// The N-API plumbing addon.c and ops.c share: error returns and typed-array views.

#ifndef HERD_NAPI_UTIL_H
#define HERD_NAPI_UTIL_H

#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

// Returns NULL from the calling N-API function with a pending JS error.
#define CHECK(call)                                                          \
  do {                                                                       \
    if ((call) != napi_ok) {                                                 \
      napi_throw_error(env, NULL, "herd native: N-API call failed: " #call); \
      return NULL;                                                           \
    }                                                                        \
  } while (0)

#define THROW(...)                                            \
  do {                                                        \
    char msg_[256];                                           \
    snprintf(msg_, sizeof msg_, "herd native: " __VA_ARGS__); \
    napi_throw_error(env, NULL, msg_);                        \
    return NULL;                                              \
  } while (0)

// A typed array's memory, read and written in place (no copy).
typedef struct {
  void *data;
  size_t length;  // elements
  napi_typedarray_type type;
} view;

// 1 when v is a typed array (of any element type: callers check out->type), else 0.
static inline int typed(napi_env env, napi_value v, view *out) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &out->type, &out->length, &out->data, &ab, &off) != napi_ok) return 0;
  return out->data != NULL || out->length == 0;
}

// 1 when v is a typed array of element type want.
static inline int typed_as(napi_env env, napi_value v, napi_typedarray_type want, view *out) {
  return typed(env, v, out) && out->type == want;
}

#endif
