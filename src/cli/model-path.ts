// Where a command finds its model: --model (a path, a stored model's name or a pulled
// reference, see src/models/resolve.ts), or the tiny model bundled with herd.

import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resolveModelSpec } from '../models/resolve.ts';
import { defaultModelsDir, ModelStore } from '../models/store.ts';
import { UsageError } from './errors.ts';

export const bundledModel = fileURLToPath(new URL('../../models/stories260K.gguf', import.meta.url));

export function resolveModelPath(model: string | undefined): string {
  const spec = model ?? bundledModel;
  const path = resolveModelSpec(spec, new ModelStore(defaultModelsDir()));
  if (path === undefined)
    throw new UsageError(`model file not found: ${spec} (nor a stored model: herd models lists them)`);
  if (!statSync(path).isFile()) throw new UsageError(`model path is not a file: ${path}`);
  return path;
}
