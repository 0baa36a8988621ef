// Request bodies arrive as `unknown` JSON; these functions narrow them into typed requests or
// throw a 400 naming the field (OpenAI's `param`). Fields herd cannot honour (n > 1, tools, the
// prompt's logprobs with echo) are refused rather than silently ignored; unknown fields are ignored, as llama.cpp's
// server does, so clients that send extra options keep working.

import { defaultSampling, MAX_LOGPROBS, validateSampling, type SamplingOptions } from '../engine/sampler.ts';
import type { ChatMessage } from '../tokenizer/chat-template.ts';
import { badRequest } from './errors.ts';

export interface GenerationParams {
  readonly model?: string;
  /** Undefined: until the end of the context (chat) or 16 tokens (completions, as OpenAI). */
  readonly maxTokens?: number;
  /** `logprobs` set: the answer carries each token's log-probability and this many top ones'. */
  readonly sampling: SamplingOptions;
  readonly stop: string[];
  readonly stream: boolean;
  readonly includeUsage: boolean;
  /** llama.cpp's `cache_prompt`: reuse a kept session for a common prompt prefix (default true). */
  readonly cachePrompt: boolean;
}

export interface ChatRequest extends GenerationParams {
  readonly messages: ChatMessage[];
}

export interface CompletionRequest extends GenerationParams {
  /** Text, or token ids. */
  readonly prompt: string | number[];
  readonly echo: boolean;
}

type Obj = Record<string, unknown>;

const MAX_STOPS = 16;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

/** A field that may be absent or null. */
function opt<T>(o: Obj, name: string, check: (v: unknown) => v is T, what: string): T | undefined {
  const v = o[name];
  if (v === undefined || v === null) return undefined;
  if (!check(v))
    throw badRequest(
      `'${name}' must be ${what}, got ${typeName(v)}${typeof v === 'number' ? ` ${v}` : ''}`,
      name,
      'invalid_type',
    );
  return v;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isInt = (v: unknown): v is number => Number.isInteger(v);

function range(name: string, v: number | undefined, lo: number, hi: number, loOpen = false): number | undefined {
  if (v === undefined) return undefined;
  if (v > hi || v < lo || (loOpen && v === lo))
    throw badRequest(`'${name}' must be in ${loOpen ? '(' : '['}${lo}, ${hi}], got ${v}`, name);
  return v;
}

function common(body: unknown): { o: Obj; p: GenerationParams } {
  if (!isObj(body))
    throw badRequest(`the request body must be a JSON object, got ${typeName(body)}`, null, 'invalid_type');
  const o = body;
  const model = opt(o, 'model', isString, 'a string');
  const n = opt(o, 'n', isInt, 'an integer');
  if (n !== undefined && n !== 1)
    throw badRequest(`herd generates one choice per request: 'n' must be 1, got ${n}`, 'n', 'unsupported_value');

  const maxTokens = opt(o, 'max_completion_tokens', isInt, 'an integer') ?? opt(o, 'max_tokens', isInt, 'an integer');
  if (maxTokens !== undefined && maxTokens < 0)
    throw badRequest(`'max_tokens' must be >= 0, got ${maxTokens}`, 'max_tokens');
  const temperature = range('temperature', opt(o, 'temperature', isNumber, 'a number'), 0, 2);
  const topP = range('top_p', opt(o, 'top_p', isNumber, 'a number'), 0, 1, true);
  const seed = opt(o, 'seed', isInt, 'an integer');
  if (seed !== undefined && (seed < 0 || seed > 0xffffffff))
    throw badRequest(`'seed' must be in [0, 4294967295], got ${seed}`, 'seed');
  const frequencyPenalty = range('frequency_penalty', opt(o, 'frequency_penalty', isNumber, 'a number'), -2, 2);
  const presencePenalty = range('presence_penalty', opt(o, 'presence_penalty', isNumber, 'a number'), -2, 2);
  // llama.cpp server's extensions
  const topK = opt(o, 'top_k', isInt, 'an integer');
  if (topK !== undefined && topK < 0) throw badRequest(`'top_k' must be >= 0, got ${topK}`, 'top_k');
  const minP = range('min_p', opt(o, 'min_p', isNumber, 'a number'), 0, 1);
  const repeatPenalty = opt(o, 'repeat_penalty', isNumber, 'a number');
  if (repeatPenalty !== undefined && repeatPenalty <= 0)
    throw badRequest(`'repeat_penalty' must be > 0, got ${repeatPenalty}`, 'repeat_penalty');

  let stop: string[] = [];
  const s = o.stop;
  if (typeof s === 'string') stop = [s];
  else if (Array.isArray(s)) {
    if (!s.every(isString)) throw badRequest("'stop' must be a string or an array of strings", 'stop', 'invalid_type');
    if (s.length > MAX_STOPS) throw badRequest(`'stop' takes at most ${MAX_STOPS} strings, got ${s.length}`, 'stop');
    stop = s;
  } else if (s !== undefined && s !== null)
    throw badRequest(`'stop' must be a string or an array of strings, got ${typeName(s)}`, 'stop', 'invalid_type');

  const stream = opt(o, 'stream', isBool, 'a boolean') ?? false;
  const cachePrompt = opt(o, 'cache_prompt', isBool, 'a boolean') ?? true;
  const so = o.stream_options;
  if (so !== undefined && so !== null && !isObj(so))
    throw badRequest(`'stream_options' must be an object, got ${typeName(so)}`, 'stream_options', 'invalid_type');
  const includeUsage = (so && isObj(so) ? opt(so, 'include_usage', isBool, 'a boolean') : undefined) ?? false;

  const sampling = validateSampling({
    temperature: temperature ?? defaultSampling.temperature,
    topK: topK ?? defaultSampling.topK,
    topP: topP ?? defaultSampling.topP,
    minP: minP ?? defaultSampling.minP,
    repeatPenalty: repeatPenalty ?? defaultSampling.repeatPenalty,
    frequencyPenalty: frequencyPenalty ?? defaultSampling.frequencyPenalty,
    presencePenalty: presencePenalty ?? defaultSampling.presencePenalty,
    penaltyLastN: defaultSampling.penaltyLastN,
    seed: seed ?? Math.floor(Math.random() * 0xffffffff),
  });
  return { o, p: { model, maxTokens, sampling, stop, stream, includeUsage, cachePrompt } };
}

/** How many top log-probabilities: 0..MAX_LOGPROBS, or undefined when the field is absent. */
function topCount(o: Obj, name: string): number | undefined {
  const n = opt(o, name, isInt, `an integer in [0, ${MAX_LOGPROBS}]`);
  return range(name, n, 0, MAX_LOGPROBS);
}

/** Chat: `logprobs` (a boolean) turns them on, `top_logprobs` (0..20) asks for the top ones. */
function chatLogprobs(o: Obj): number | undefined {
  const on = opt(o, 'logprobs', isBool, 'a boolean') ?? false;
  const top = topCount(o, 'top_logprobs');
  if (top !== undefined && !on) throw badRequest("'top_logprobs' needs 'logprobs' set to true", 'top_logprobs');
  return on ? (top ?? 0) : undefined;
}

/** Completions: `logprobs` is the number of top ones (0..20); false means none, as null does. */
function completionLogprobs(o: Obj): number | undefined {
  if (o.logprobs === false) return undefined;
  return topCount(o, 'logprobs');
}

/** Message content: a string, or OpenAI's array of parts of which herd reads the text ones. */
function content(v: unknown, at: string): string {
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) {
    return v
      .map((part, i) => {
        if (!isObj(part) || typeof part.type !== 'string')
          throw badRequest(`'${at}[${i}]' must be a content part object`, at, 'invalid_type');
        if (part.type !== 'text' || typeof part.text !== 'string')
          throw badRequest(
            `'${at}[${i}]': herd reads text parts only, got type '${part.type}'`,
            at,
            'unsupported_value',
          );
        return part.text;
      })
      .join('');
  }
  throw badRequest(`'${at}' must be a string or an array of text parts, got ${typeName(v)}`, at, 'invalid_type');
}

export function parseChatRequest(body: unknown): ChatRequest {
  const { o, p: base } = common(body);
  const p = { ...base, sampling: { ...base.sampling, logprobs: chatLogprobs(o) } };
  const tools = o.tools;
  if (Array.isArray(tools) && tools.length > 0)
    throw badRequest('herd does not support tools yet', 'tools', 'unsupported_value');
  const raw = o.messages;
  if (raw === undefined) throw badRequest("'messages' is required", 'messages', 'missing_required_parameter');
  if (!Array.isArray(raw))
    throw badRequest(`'messages' must be an array, got ${typeName(raw)}`, 'messages', 'invalid_type');
  if (raw.length === 0) throw badRequest("'messages' must hold at least one message", 'messages');
  const messages = raw.map((m, i): ChatMessage => {
    const at = `messages[${i}]`;
    if (!isObj(m)) throw badRequest(`'${at}' must be an object, got ${typeName(m)}`, at, 'invalid_type');
    const role = m.role;
    if (typeof role !== 'string') throw badRequest(`'${at}.role' must be a string`, `${at}.role`, 'invalid_type');
    // OpenAI's newer name for the system role
    const r = role === 'developer' ? 'system' : role;
    if (r !== 'system' && r !== 'user' && r !== 'assistant') {
      throw badRequest(
        `'${at}.role' must be system, user or assistant, got '${role}'`,
        `${at}.role`,
        'unsupported_value',
      );
    }
    return { role: r, content: content(m.content, `${at}.content`) };
  });
  return { ...p, messages };
}

export function parseCompletionRequest(body: unknown, vocabSize: number): CompletionRequest {
  const { o, p: base } = common(body);
  const p = { ...base, sampling: { ...base.sampling, logprobs: completionLogprobs(o) } };
  const echo = opt(o, 'echo', isBool, 'a boolean') ?? false;
  if (echo && p.sampling.logprobs !== undefined) {
    throw badRequest(
      "herd returns the generated tokens' logprobs, not the prompt's: 'echo' with 'logprobs' is not supported",
      'echo',
      'unsupported_value',
    );
  }
  const suffix = opt(o, 'suffix', isString, 'a string');
  if (suffix) throw badRequest("herd does not support 'suffix' (fill-in-the-middle)", 'suffix', 'unsupported_value');
  let prompt = o.prompt;
  if (prompt === undefined || prompt === null)
    throw badRequest("'prompt' is required", 'prompt', 'missing_required_parameter');
  // A batch of one prompt is that prompt; several would need several choices.
  if (Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === 'string' || Array.isArray(prompt[0])))
    prompt = prompt[0];
  if (typeof prompt === 'string') return { ...p, prompt, echo };
  if (Array.isArray(prompt) && prompt.every(isInt)) {
    const bad = prompt.find((id) => id < 0 || id >= vocabSize);
    if (bad !== undefined)
      throw badRequest(`'prompt' token id ${bad} is outside the vocabulary (0..${vocabSize - 1})`, 'prompt');
    return { ...p, prompt: prompt as number[], echo };
  }
  if (Array.isArray(prompt) && prompt.length > 1 && prompt.every((x) => typeof x === 'string' || Array.isArray(x))) {
    throw badRequest(`herd takes one prompt per request, got ${prompt.length}`, 'prompt', 'unsupported_value');
  }
  throw badRequest(
    `'prompt' must be a string or an array of token ids, got ${typeName(prompt)}`,
    'prompt',
    'invalid_type',
  );
}
