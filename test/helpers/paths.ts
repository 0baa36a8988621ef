// Where tests find the shared reference data and the repository's own files.

import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const sharedModels = fileURLToPath(new URL('../../../shared/models/', import.meta.url));
export const sharedVocab = fileURLToPath(new URL('../../../shared/vocab/', import.meta.url));
export const herdBin = fileURLToPath(new URL('../../bin/herd.js', import.meta.url));
