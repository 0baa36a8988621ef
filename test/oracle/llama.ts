// llama.cpp as a test oracle, through node-llama-cpp 3.21.1 (installed on demand in test/oracle
// by ensure.mjs, never by the root install: see the notes at the top of ensure.mjs).
//
// The package is loaded with a dynamic import whose specifier is not a literal, so the root
// `tsc --noEmit` passes whether or not it is installed; the few calls used here are typed by
// the minimal interfaces below, written from node-llama-cpp 3.21.1's d.ts files
// (dist/bindings/getLlama.d.ts, dist/evaluator/LlamaModel/LlamaModel.d.ts,
// dist/evaluator/LlamaContext/{LlamaContext,types}.d.ts).

import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The folder of the private oracle package (test/oracle). */
export const ORACLE_DIR = fileURLToPath(new URL('./', import.meta.url));
export const ENSURE_HINT = 'run `node test/oracle/ensure.mjs` (the root `npm test` runs it first)';

type Token = number;

interface ControlledEvaluateIndexOutput {
  next: { token?: Token | null; confidence?: number; probabilities?: Map<Token, number> };
}
type ControlledEvaluateInputItem = Token | [token: Token, options: { generateNext?: { probabilities?: boolean } }];

interface LlamaContextSequence {
  controlledEvaluate(input: ControlledEvaluateInputItem[]): Promise<Array<undefined | ControlledEvaluateIndexOutput>>;
  dispose(): void;
}
interface LlamaContext {
  readonly contextSize: number;
  readonly kvCacheKeyType: number;
  readonly kvCacheValueType: number;
  readonly flashAttention: boolean;
  getSequence(): LlamaContextSequence;
  dispose(): Promise<void>;
}
interface LlamaModel {
  readonly trainContextSize: number;
  readonly tokens: { readonly bos: Token | null };
  createContext(options: {
    contextSize?: number;
    batchSize?: number;
    sequences?: number;
    threads?: number;
    flashAttention?: boolean;
    experimentalKvCacheKeyType?: 'F32' | 'F16';
    experimentalKvCacheValueType?: 'F32' | 'F16';
  }): Promise<LlamaContext>;
  dispose(): Promise<void>;
}
interface Llama {
  readonly gpu: string | false;
  /** ggml's compiled CPU features of the build that loaded, e.g. "… AVX512 = 1 | AMX_INT8 = 1 | …". */
  readonly systemInfo: string;
  readonly buildType: string;
  loadModel(options: { modelPath: string; gpuLayers?: number; useMmap?: boolean }): Promise<LlamaModel>;
}
interface NodeLlamaCpp {
  getLlama(options: {
    gpu: false;
    build: 'never';
    logLevel?: string;
    logger?: (level: string, message: string) => void;
  }): Promise<Llama>;
  getModuleVersion?(): Promise<string>;
}

/** ggml's type numbers for the KV cache types this wrapper asks for. */
const GGML_F32 = 0;
const GGML_F16 = 1;

let llamaPromise: Promise<Llama> | undefined;

/** Whether node-llama-cpp is installed in test/oracle (its prebuilt binary is checked by getLlama). */
export function oracleInstalled(): boolean {
  return existsSync(new URL('./node_modules/node-llama-cpp/package.json', import.meta.url));
}

/**
 * The llama.cpp CPU backend (prebuilt binary, never built from source), loaded once per process.
 * Fails with a message naming the ensure script when the oracle package is not installed.
 */
export function getOracleLlama(): Promise<Llama> {
  llamaPromise ??= (async () => {
    if (!oracleInstalled()) {
      throw new Error(`node-llama-cpp is not installed in ${ORACLE_DIR}: ${ENSURE_HINT}`);
    }
    const spec: string = 'node-llama-cpp';
    let mod: NodeLlamaCpp;
    try {
      mod = (await import(spec)) as NodeLlamaCpp;
    } catch (e) {
      throw new Error(`cannot load node-llama-cpp from ${ORACLE_DIR} (${(e as Error).message}): ${ENSURE_HINT}`, {
        cause: e,
      });
    }
    try {
      // llama.cpp's loader warnings (e.g. stories260K's "bad special token") would flood the test log.
      return await mod.getLlama({ gpu: false, build: 'never', logLevel: 'error' });
    } catch (e) {
      throw new Error(`node-llama-cpp found no prebuilt CPU binary (${(e as Error).message}): ${ENSURE_HINT}`, {
        cause: e,
      });
    }
  })();
  return llamaPromise;
}

export interface DistributionOptions {
  /** KV cache element type (default 'F32', the precision herd's own tests compare against). */
  kvType?: 'F32' | 'F16';
  /** Threads llama.cpp may use (default 2). */
  threads?: number;
  /**
   * Tokens per evaluation call (default: all positions in one batch). 1 feeds them one by one,
   * so llama.cpp multiplies single vectors instead of a 32-column batch (other kernels, other
   * summation order): a measure of llama.cpp's own noise floor. Measured with this binary on an
   * AVX-512/AMX machine: batch 1 is repeatable bit for bit; from 2 tokens per call q5_k and
   * bf16 weights move by up to 8e-2 and 4e-2 in log p, q2_k by 2e-2 from 4, other K-quants
   * and f16 by ~2e-6, and Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 not at all. Compare token by token.
   */
  batch?: number;
}

export interface Distributions {
  /** probs[i] is the next-token distribution after tokens[0..i] (teacher forced). */
  probs: Float32Array[];
  /** What llama.cpp actually used, for the test log. */
  contextSize: number;
  kvType: string;
  flashAttention: boolean;
}

/**
 * Full next-token probability vectors (softmax of llama.cpp's logits, over the whole vocab)
 * after each prefix tokens[0..i], i = 0..positions-1, from one teacher-forced evaluation of
 * tokens[0..positions-1] in a fresh context. node-llama-cpp has no raw-logit call; its
 * probabilities are exp(logit - max) / sum in float32 over every vocab entry (with the default
 * greedy sampler nothing is filtered), so softmax(herd's logits) compares with them directly.
 */
export async function nextTokenDistributionsDetailed(
  modelPath: string,
  tokens: readonly number[],
  positions: number,
  options: DistributionOptions = {},
): Promise<Distributions> {
  if (!Number.isInteger(positions) || positions < 1 || positions > tokens.length) {
    throw new RangeError(`positions must be 1..${tokens.length}, got ${positions}`);
  }
  const kvType = options.kvType ?? 'F32';
  const llama = await getOracleLlama();
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  try {
    // The context is a multiple of 256 at least (llama.cpp pads it); one batch holds every token.
    const contextSize = Math.max(256, Math.ceil(positions / 256) * 256);
    const context = await model.createContext({
      contextSize,
      batchSize: contextSize,
      sequences: 1,
      threads: options.threads ?? 2,
      // The plain attention path (KQ matmul, soft_max, KQV): with an f32 cache it runs in f32 throughout.
      flashAttention: false,
      experimentalKvCacheKeyType: kvType,
      experimentalKvCacheValueType: kvType,
    });
    try {
      const want = kvType === 'F32' ? GGML_F32 : GGML_F16;
      if (context.kvCacheKeyType !== want || context.kvCacheValueType !== want) {
        throw new Error(
          `llama.cpp context has KV cache types K=${context.kvCacheKeyType} V=${context.kvCacheValueType}, asked for ${kvType}`,
        );
      }
      const sequence = context.getSequence();
      try {
        const input: ControlledEvaluateInputItem[] = tokens
          .slice(0, positions)
          .map((id) => [id, { generateNext: { probabilities: true } }]);
        const batch = options.batch ?? positions;
        if (!Number.isInteger(batch) || batch < 1)
          throw new RangeError(`batch must be a positive integer, got ${batch}`);
        const out: Array<undefined | ControlledEvaluateIndexOutput> = [];
        for (let start = 0; start < positions; start += batch) {
          const chunk = input.slice(start, start + batch);
          const res = await sequence.controlledEvaluate(chunk);
          for (let j = 0; j < chunk.length; j++) out[start + j] = res[j];
        }
        const probs: Float32Array[] = [];
        let vocab = -1;
        for (let i = 0; i < positions; i++) {
          const map = out[i]?.next.probabilities;
          if (!map) throw new Error(`llama.cpp returned no probabilities at position ${i}`);
          if (vocab < 0) {
            for (const id of map.keys()) vocab = Math.max(vocab, id + 1);
          }
          const p = new Float32Array(vocab);
          for (const [id, prob] of map) {
            if (id >= vocab) throw new Error(`token id ${id} at position ${i} is outside the vocab (${vocab})`);
            p[id] = prob;
          }
          if (map.size !== vocab) throw new Error(`position ${i}: ${map.size} probabilities for a vocab of ${vocab}`);
          probs.push(p);
        }
        return { probs, contextSize: context.contextSize, kvType, flashAttention: context.flashAttention };
      } finally {
        sequence.dispose();
      }
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/** The probability vectors of nextTokenDistributionsDetailed, alone. */
export async function nextTokenDistributions(
  modelPath: string,
  tokens: readonly number[],
  positions: number,
  options: DistributionOptions = {},
): Promise<Float32Array[]> {
  return (await nextTokenDistributionsDetailed(modelPath, tokens, positions, options)).probs;
}

/** Softmax in float64 of one logit row (for comparing herd's or a reference file's logits). */
export function softmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  const out = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    out[i] = Math.exp(logits[i] - max);
    sum += out[i];
  }
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}

/** max_i |a[i] - b[i]| and where it happens; the lengths must match. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; at: number } {
  if (a.length !== b.length) throw new RangeError(`length ${a.length} vs ${b.length}`);
  let max = 0;
  let at = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (Number.isNaN(d)) return { max: NaN, at: i };
    if (d > max) {
      max = d;
      at = i;
    }
  }
  return { max, at };
}

/**
 * Whether the llama.cpp build that loaded here has AMX (the Sapphire Rapids CPU variant, chosen
 * by the CPU's features). Its AMX weight buffer multiplies F16 weights by f32 activations,
 * where every other build rounds the activations to f16 first (ggml's F16 vec_dot_type).
 */
export async function oracleHasAmx(): Promise<boolean> {
  return /\bAMX_INT8 = 1\b/.test((await getOracleLlama()).systemInfo);
}
