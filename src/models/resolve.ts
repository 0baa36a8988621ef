// What `--model` names, for every command: a GGUF path, a stored model's name, or a reference
// (`hf.co/ORG/REPO:QUANT`, `hf.co/ORG/REPO/FILE.gguf`, a URL) that `herd pull` already fetched.
// Nothing is downloaded here: a reference not yet pulled says which command pulls it.

import { existsSync } from 'node:fs';
import { ModelStoreError } from './errors.ts';
import { canonicalReference, parseReference } from './reference.ts';
import type { ModelStore } from './store.ts';

/** The file `spec` names, or undefined when it is neither a path nor a stored model. */
export function resolveModelSpec(spec: string, store: ModelStore): string | undefined {
  if (existsSync(spec)) return spec;
  const ref = parseReference(spec);
  if (ref) {
    const stored = store.find(canonicalReference(ref));
    if (!stored) throw new ModelStoreError('usage', `${spec} is not pulled yet: run herd pull ${spec}`);
    return stored.path;
  }
  return store.get(spec)?.path;
}
