// Log-probabilities in OpenAI's two shapes, from the engine's TokenLogprobs (token ids):
// chat's `{content: [{token, logprob, bytes, top_logprobs}]}` and the legacy completions'
// `{tokens, token_logprobs, top_logprobs, text_offset}`. Streamed, each chunk carries the
// entries of the tokens generated since the previous chunk, so the chunks' entries joined are
// the whole answer's.

import type { TokenLogprobs } from '../engine/sampler.ts';
import type { TextStream, Tokenizer } from '../tokenizer/index.ts';

export interface ChatTopLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

export interface ChatTokenLogprob extends ChatTopLogprob {
  top_logprobs: ChatTopLogprob[];
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

/** A token as OpenAI names it: its piece as text (control tokens spelled out) and its bytes. */
function named(tokenizer: Tokenizer, id: number, logprob: number): ChatTopLogprob {
  return { token: tokenizer.piece(id), logprob, bytes: Array.from(tokenizer.pieceBytes(id)) };
}

export function chatLogprobs(tokenizer: Tokenizer, entries: readonly TokenLogprobs[]): { content: ChatTokenLogprob[] } {
  return {
    content: entries.map((e) => ({
      ...named(tokenizer, e.token, e.logprob),
      top_logprobs: e.top.map((t) => named(tokenizer, t.token, t.logprob)),
    })),
  };
}

/**
 * Builds the completions shape over one answer, chunk by chunk: text_offset counts the
 * characters of the answer's text before each token, as the generation loop decodes it.
 */
export class CompletionLogprobsWriter {
  private readonly decoder: TextStream;
  private offset: number;

  constructor(
    private readonly tokenizer: Tokenizer,
    /** Characters before the first generated token in the choice's text. */
    start = 0,
  ) {
    this.decoder = tokenizer.stream();
    this.offset = start;
  }

  /** The next tokens' entries, in order. */
  next(entries: readonly TokenLogprobs[]): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const e of entries) {
      out.tokens.push(this.tokenizer.piece(e.token));
      out.token_logprobs.push(e.logprob);
      const top: Record<string, number> = {};
      // Two tokens with one piece: the more likely one's (it comes first).
      for (const t of e.top) {
        const piece = this.tokenizer.piece(t.token);
        if (!(piece in top)) top[piece] = t.logprob;
      }
      out.top_logprobs.push(top);
      out.text_offset.push(this.offset);
      this.offset += this.decoder.push(e.token).length;
    }
    return out;
  }
}
