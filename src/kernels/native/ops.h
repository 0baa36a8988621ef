// The per-layer operations other than the products (ops.c): attention over the KV cache
// and the SwiGLU activation, the native KernelBackend.attend and .swiglu.

#ifndef HERD_OPS_H
#define HERD_OPS_H

#include <node_api.h>

#include "pool.h"

// The pool and instruction-set path (enum herd_isa) of a backend handle (addon.c); NULL
// when v is not a backend or the backend is closed.
herd_pool *herd_backend_pool(napi_env env, napi_value v, int *isa);

// Adds attend() and swiglu() to the addon's exports.
napi_status herd_register_ops(napi_env env, napi_value exports);

#endif
