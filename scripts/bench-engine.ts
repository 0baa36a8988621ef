// One engine's figures on one model, in a process of its own so its peak RSS is its own:
// prefill tok/s for a prompt of P tokens, decode tok/s for D greedy tokens after one.
// Prints one JSON line. Run by scripts/bench.ts; usable alone:
//   node --import tsx scripts/bench-engine.ts --engine herd --backend wasm --model F.gguf
//   --simd relaxed|simd128 picks the wasm build (default: relaxed where the runtime has it).

import { parseArgs } from 'node:util';
import { GgufFile } from '../src/gguf/reader.ts';
import { Transformer } from '../src/model/transformer.ts';
import { LocalSession } from '../src/engine/local.ts';
import { defaultSampling } from '../src/engine/sampler.ts';
import { createBackend, type BackendChoice } from '../src/kernels/select.ts';
import { WasmBackend, type WasmSimd } from '../src/kernels/wasm/backend.ts';

const { values } = parseArgs({
  options: {
    engine: { type: 'string', default: 'herd' },
    backend: { type: 'string', default: 'auto' },
    model: { type: 'string' },
    threads: { type: 'string', default: '2' },
    decode: { type: 'string', default: '64' },
    prefill: { type: 'string', default: '128' },
    simd: { type: 'string' },
  },
});
if (!values.model) throw new Error('--model is required');
const threads = Number(values.threads);
const decodeN = Number(values.decode);
const prefillN = Number(values.prefill);
const ctx = 512;

/** The same prompt for both engines: ids spread over the vocabulary, past the special tokens. */
function promptTokens(vocab: number, n: number, bos: number): number[] {
  const out = [bos];
  for (let i = 1; i < n; i++) out.push(3 + ((i * 7919) % (vocab - 3)));
  return out;
}

interface Figures {
  engine: string;
  backend: string;
  /** The instruction set herd's kernels ran on (KernelBackend.isa); llama.cpp: cpu. */
  isa: string;
  threads: number;
  prefill_tokens: number;
  prefill_tps: number;
  decode_tokens: number;
  decode_tps: number;
  peak_rss_mib: number;
}

async function herd(model: string): Promise<Figures> {
  const file = GgufFile.open(model);
  const backend = values.simd
    ? await WasmBackend.create({ threads, simd: values.simd as WasmSimd })
    : await createBackend(values.backend as BackendChoice, { threads });
  const m = Transformer.load(file, { ctx, kvType: 'f16', backend, batch: prefillN });
  const bos = file.number('tokenizer.ggml.bos_token_id', 1);
  const greedy = { ...defaultSampling, temperature: 0 };
  const prompt = promptTokens(m.config.vocabSize, prefillN, bos);

  // warm-up: JIT and first touches of the weights
  await new LocalSession(m, greedy).step(prompt.slice(0, 8), 0);

  const prefill = new LocalSession(m, greedy);
  let t = performance.now();
  await prefill.step(prompt, 0);
  const prefillMs = performance.now() - t;

  const decode = new LocalSession(m, greedy);
  let next = await decode.step([bos], 0);
  t = performance.now();
  for (let pos = 1; pos <= decodeN; pos++) next = await decode.step([next], pos);
  const decodeMs = performance.now() - t;
  await backend.close();
  return figures('herd', backend.name, backend.isa, prefillMs, decodeMs);
}

async function llamaCpp(model: string): Promise<Figures> {
  const { getOracleLlama } = await import('../test/oracle/llama.ts');
  const llama = await getOracleLlama();
  const loaded = (await llama.loadModel({ modelPath: model, gpuLayers: 0 })) as unknown as LlamaModelForBench;
  const context = await loaded.createContext({ contextSize: ctx, batchSize: ctx, sequences: 1, threads });
  const bos = loaded.tokens.bos ?? 1;
  const prompt = promptTokens(loaded.fileInsights?.vocabSize ?? 32000, prefillN, bos);

  const warm = context.getSequence();
  await warm.evaluateWithoutGeneratingNewTokens(prompt.slice(0, 8));
  warm.dispose();

  const prefill = context.getSequence();
  let t = performance.now();
  await prefill.evaluateWithoutGeneratingNewTokens(prompt);
  const prefillMs = performance.now() - t;
  prefill.dispose();

  const decode = context.getSequence();
  let count = -1;
  t = 0;
  for await (const _token of decode.evaluate([bos], { temperature: 0 })) {
    if (++count === 0) t = performance.now();
    if (count === decodeN) break;
  }
  const decodeMs = performance.now() - t;
  decode.dispose();
  await context.dispose();
  await loaded.dispose();
  return figures('llama.cpp', 'cpu', 'cpu', prefillMs, decodeMs);
}

interface LlamaSequenceForBench {
  evaluateWithoutGeneratingNewTokens(tokens: number[]): Promise<void>;
  evaluate(tokens: number[], options: { temperature: number }): AsyncGenerator<number, void, void>;
  dispose(): void;
}
interface LlamaModelForBench {
  readonly tokens: { readonly bos: number | null };
  readonly fileInsights?: { readonly vocabSize?: number };
  createContext(o: { contextSize: number; batchSize: number; sequences: number; threads: number }): Promise<{
    getSequence(): LlamaSequenceForBench;
    dispose(): Promise<void>;
  }>;
  dispose(): Promise<void>;
}

function figures(engine: string, backend: string, isa: string, prefillMs: number, decodeMs: number): Figures {
  return {
    engine,
    backend,
    isa,
    threads,
    prefill_tokens: prefillN,
    prefill_tps: prefillN / (prefillMs / 1000),
    decode_tokens: decodeN,
    decode_tps: decodeN / (decodeMs / 1000),
    peak_rss_mib: process.resourceUsage().maxRSS / 1024,
  };
}

const result = values.engine === 'llama.cpp' ? await llamaCpp(values.model) : await herd(values.model);
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
