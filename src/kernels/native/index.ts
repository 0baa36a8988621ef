// The native backend's public face: the backend, its availability and its options.

export { NativeBackend, NativeBackendError, isNativeAvailable } from './backend.ts';
export type { NativeBackendErrorCode, NativeBackendOptions, NativeIsa } from './backend.ts';
