// What a user may name a model by, as Ollama and llama.cpp's `-hf` take them:
//   hf.co/ORG/REPO[:QUANT]        the repository's GGUF of that quantization (default Q4_K_M)
//   hf.co/ORG/REPO/PATH.gguf      one file of the repository
//   https://HOST/…/NAME.gguf      any URL
// (`huggingface.co/` works for `hf.co/`), and what a GGUF file's name says: its quantization
// and, for a split model, which part of how many it is.

import { ModelStoreError } from './errors.ts';

export type ModelReference =
  | { readonly kind: 'hf-repo'; readonly repo: string; readonly quant: string | undefined }
  | { readonly kind: 'hf-file'; readonly repo: string; readonly path: string }
  | { readonly kind: 'url'; readonly url: string };

/** The quantization `hf.co/ORG/REPO` means, as for Ollama and llama.cpp. */
export const DEFAULT_QUANT = 'Q4_K_M';

const HF_PREFIX = /^(?:https?:\/\/)?(?:hf\.co|huggingface\.co)\//i;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** The reference `text` spells, or undefined when it is not one (a path or a stored name). */
export function parseReference(text: string): ModelReference | undefined {
  const hf = HF_PREFIX.exec(text);
  if (hf) return parseHf(text, text.slice(hf[0].length));
  if (/^https?:\/\//i.test(text)) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new ModelStoreError('usage', `not a valid URL: ${text}`);
    }
    if (!/\.gguf$/i.test(url.pathname)) throw new ModelStoreError('usage', `${text}: the URL must name a .gguf file`);
    return { kind: 'url', url: url.href };
  }
  return undefined;
}

function parseHf(text: string, rest: string): ModelReference {
  const [org, repoAndQuant, ...path] = rest.split('/');
  const usage = `expected hf.co/ORG/REPO[:QUANT] or hf.co/ORG/REPO/FILE.gguf, got ${text}`;
  if (org === undefined || repoAndQuant === undefined) throw new ModelStoreError('usage', usage);
  if (path.length > 0) {
    const file = path.join('/');
    if (!NAME.test(org) || !NAME.test(repoAndQuant) || !/\.gguf$/i.test(file) || path.some((p) => !NAME.test(p)))
      throw new ModelStoreError('usage', usage);
    return { kind: 'hf-file', repo: `${org}/${repoAndQuant}`, path: file };
  }
  const [repo, quant, extra] = repoAndQuant.split(':');
  if (extra !== undefined || !NAME.test(org) || !NAME.test(repo) || (quant !== undefined && !/^\w+$/.test(quant)))
    throw new ModelStoreError('usage', usage);
  return { kind: 'hf-repo', repo: `${org}/${repo}`, quant: quant?.toUpperCase() };
}

/** The one spelling of a reference the store records and looks up (hub names ignore case). */
export function canonicalReference(r: ModelReference): string {
  switch (r.kind) {
    case 'hf-repo':
      return `hf.co/${r.repo}${r.quant ? `:${r.quant}` : ''}`.toLowerCase();
    case 'hf-file':
      return `hf.co/${r.repo}/${r.path}`.toLowerCase();
    case 'url':
      return r.url;
  }
}

const SPLIT = /-(\d{5})-of-(\d{5})\.gguf$/i;

/** Part `index` (1-based) of `count` when the file is one part of a split GGUF (`-00001-of-00003`). */
export function splitPart(file: string): { readonly index: number; readonly count: number } | undefined {
  const m = SPLIT.exec(file);
  return m ? { index: Number(m[1]), count: Number(m[2]) } : undefined;
}

const QUANT = /^(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|BF16|F16|F32|MXFP4(?:_MOE)?)$/i;

/**
 * The quantization a GGUF file's name states, upper-cased (`Llama-3.2-1B-Instruct-Q4_K_M.gguf`
 * → Q4_K_M, `tinyllama.q8_0.gguf` → Q8_0), or undefined: the last `-` or `.` separated word that
 * is a quantization's name, so `Q4_K` and `Q4_K_M` stay apart.
 */
export function fileQuant(file: string): string | undefined {
  const base = (file.split('/').pop() ?? file).replace(SPLIT, '.gguf').replace(/\.gguf$/i, '');
  const words = base.split(/[-.]/).reverse();
  return words.find((w) => QUANT.test(w))?.toUpperCase();
}

/** The name a model is stored under: its file name without `.gguf` or a split suffix. */
export function storeNameOf(file: string): string {
  return (file.split('/').pop() ?? file).replace(SPLIT, '.gguf').replace(/\.gguf$/i, '');
}
