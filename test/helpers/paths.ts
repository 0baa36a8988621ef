// Where tests find the repository's own files: the bundled model and the test fixtures
// (test/fixtures, see its README for where each file came from).

import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
/** The bundled f32 stories260K model, the one `herd run` uses by default. */
export const bundledModel = fileURLToPath(new URL('../../models/stories260K.gguf', import.meta.url));
/** stories260K's quantized variants and llama.cpp's reference outputs for them. */
export const fixtureModels = fileURLToPath(new URL('../fixtures/models/', import.meta.url));
/** llama.cpp's tokenizer test vocabularies with their .inp/.out vectors. */
export const fixtureVocab = fileURLToPath(new URL('../fixtures/vocab/', import.meta.url));
export const herdBin = fileURLToPath(new URL('../../bin/herd.js', import.meta.url));
