// Where a command finds its model: --model, or the tiny model bundled with herd.

import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { UsageError } from './errors.ts';

export const bundledModel = fileURLToPath(new URL('../../models/stories260K.gguf', import.meta.url));

export function resolveModelPath(model: string | undefined): string {
  const path = model ?? bundledModel;
  if (!existsSync(path)) throw new UsageError(`model file not found: ${path}`);
  if (!statSync(path).isFile()) throw new UsageError(`model path is not a file: ${path}`);
  return path;
}
