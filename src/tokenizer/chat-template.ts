// Chat templates: a conversation (system/user/assistant messages) becomes the one prompt text
// the model was trained on. The model's own `tokenizer.chat_template` (Jinja, as Hugging Face
// writes it) is rendered with @huggingface/jinja; models without one get a named fallback.
//
// Only the template's own markers are special tokens: the text of a control token inside a
// message ("<|im_end|><|im_start|>system" in a user's message) stays text, or any user could
// end their turn and write the system's. Such text is swapped for an unguessable marker while
// the template renders, then put back as a span the tokenizer leaves plain.

import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Template } from '@huggingface/jinja';
import type { GgufFile } from '../gguf/reader.ts';
import type { TextRange } from './partition.ts';
import type { Tokenizer } from './tokenizer.ts';
import { TokenAttr, type Vocab } from './vocab.ts';

export interface ChatMessage {
  readonly role: 'system' | 'user' | 'assistant';
  readonly content: string;
}

export type FallbackName = 'chatml' | 'llama2' | 'llama3' | 'zephyr';
export const FALLBACK_NAMES: readonly FallbackName[] = ['chatml', 'llama2', 'llama3', 'zephyr'];

/** The fallbacks, as the Jinja their models ship (whitespace as in the reference templates). */
const FALLBACKS: Record<FallbackName, { source: string; stops: string[] }> = {
  chatml: {
    source:
      "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    stops: ['<|im_end|>', '<|im_start|>'],
  },
  llama2: {
    // Meta's Llama-2-chat format: the system prompt folds into the first user turn.
    source:
      "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}" +
      '{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}' +
      '{% for message in loop_messages %}' +
      "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}" +
      "{% else %}{% set content = message['content'] %}{% endif %}" +
      "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}" +
      "{% elif message['role'] == 'assistant' %}{{ ' ' + content | trim + ' ' + eos_token }}{% endif %}" +
      '{% endfor %}',
    stops: ['[INST]'],
  },
  llama3: {
    source:
      '{{ bos_token }}{% for message in messages %}' +
      "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}" +
      "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    stops: ['<|eot_id|>', '<|start_header_id|>'],
  },
  zephyr: {
    source:
      "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}{% endfor %}" +
      "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    stops: ['<|user|>', '<|system|>'],
  },
};

export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChatTemplateError';
  }
}

export interface RenderedChat {
  /** Prompt token ids: the rendered text encoded with the template's special tokens parsed. */
  readonly ids: number[];
  readonly text: string;
  /** Where the messages put control-token text: tokenized as text. */
  readonly plain: readonly TextRange[];
}

export class ChatTemplate {
  private readonly template: Template;
  private controls?: ControlText;

  private constructor(
    /** `model` (the file's own), a fallback name, or the path of a template file. */
    readonly name: string,
    readonly source: string,
    /** Text that marks the end of the assistant's turn when the vocabulary has no token for it. */
    readonly stops: readonly string[],
    private readonly tokenizer: Tokenizer,
  ) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new ChatTemplateError(`chat template ${name} does not parse: ${(e as Error).message}`);
    }
  }

  /**
   * The template for a model: `choice` names a fallback or a Jinja file; without it, the
   * model's `tokenizer.chat_template`, else the fallback its special tokens point to.
   */
  static forModel(file: GgufFile, tokenizer: Tokenizer, choice?: string): ChatTemplate {
    if (choice !== undefined && choice !== 'auto') {
      if ((FALLBACK_NAMES as readonly string[]).includes(choice)) {
        const f = FALLBACKS[choice as FallbackName];
        return new ChatTemplate(choice, f.source, f.stops, tokenizer);
      }
      if (choice === 'model')
        return ChatTemplate.fromModel(file, tokenizer) ?? fail(`${file.path} has no tokenizer.chat_template`);
      let source: string;
      try {
        source = readFileSync(choice, 'utf8');
      } catch {
        return fail(
          `chat template "${choice}" is neither ${[...FALLBACK_NAMES, 'model'].join(', ')} nor a readable file`,
        );
      }
      return new ChatTemplate(choice, source, [], tokenizer);
    }
    const own = ChatTemplate.fromModel(file, tokenizer);
    if (own) return own;
    const name = guessFallback(tokenizer);
    return new ChatTemplate(name, FALLBACKS[name].source, FALLBACKS[name].stops, tokenizer);
  }

  private static fromModel(file: GgufFile, tokenizer: Tokenizer): ChatTemplate | undefined {
    if (!file.has('tokenizer.chat_template')) return undefined;
    return new ChatTemplate('model', file.string('tokenizer.chat_template'), [], tokenizer);
  }

  /** The prompt text for `messages`, ending where the assistant's reply begins. */
  renderText(messages: readonly ChatMessage[]): string {
    return this.renderMarked(messages).text;
  }

  /**
   * Renders and encodes: the template's control-token text becomes its id, the messages' stays
   * text; no second BOS if the text has one.
   */
  render(messages: readonly ChatMessage[]): RenderedChat {
    const { text, plain } = this.renderMarked(messages);
    const bos = this.tokenizer.bos;
    const bosText = bos === undefined ? undefined : this.tokenizer.vocab.tokens[bos];
    const startsWithBos = bosText !== undefined && bosText.length > 0 && text.startsWith(bosText);
    const ids = this.tokenizer.encode(text, { addSpecial: !startsWithBos, parseSpecial: true, plain });
    return { text, ids, plain };
  }

  /** The rendered text, and the spans of it that are control-token text from the messages. */
  private renderMarked(messages: readonly ChatMessage[]): { text: string; plain: TextRange[] } {
    const v = this.tokenizer.vocab;
    const tokenText = (id: number | undefined) => (id === undefined ? '' : v.tokens[id]);
    const controls = (this.controls ??= new ControlText(v));
    // Private-use characters and digits: no template filter (trim, upper, …) changes a marker.
    const nonce = `${randomInt(2 ** 47)}${randomInt(2 ** 47)}`;
    const swapped: string[] = [];
    const mark = (tok: string) => `\uE000${nonce}.${swapped.push(tok) - 1}\uE001`;
    let rendered: string;
    try {
      rendered = this.template.render({
        messages: messages.map((m) => ({ role: m.role, content: controls.replace(m.content, mark) })),
        add_generation_prompt: true,
        bos_token: tokenText(v.special.bos),
        eos_token: tokenText(v.special.eos),
      });
    } catch (e) {
      throw new ChatTemplateError(`chat template ${this.name}: ${(e as Error).message}`);
    }
    let text = '';
    const plain: TextRange[] = [];
    let at = 0;
    for (const m of rendered.matchAll(new RegExp(`\uE000${nonce}\\.(\\d+)\uE001`, 'g'))) {
      const tok = swapped[Number(m[1])];
      text += rendered.slice(at, m.index);
      plain.push([text.length, text.length + tok.length]);
      text += tok;
      at = m.index + m[0].length;
    }
    return { text: text + rendered.slice(at), plain };
  }
}

/** The texts of a vocabulary's control tokens, found in a message (leftmost, longest first). */
class ControlText {
  /** By first character, longest first. */
  private readonly byFirst = new Map<string, string[]>();

  constructor(vocab: Vocab) {
    for (const id of vocab.specialTokens) {
      const t = vocab.tokens[id];
      // User-defined tokens are matched in any text, parseSpecial or not: not this class's.
      if (t === '' || !(vocab.attrs[id] & (TokenAttr.Control | TokenAttr.Unknown))) continue;
      const list = this.byFirst.get(t[0]);
      if (list) list.push(t);
      else this.byFirst.set(t[0], [t]);
    }
  }

  /** `s` with each control token's text replaced by `by(text)`. */
  replace(s: string, by: (tok: string) => string): string {
    let out = '';
    let from = 0;
    for (let i = 0; i < s.length;) {
      const tok = this.byFirst.get(s[i])?.find((t) => s.startsWith(t, i));
      if (tok === undefined) {
        i++;
        continue;
      }
      out += s.slice(from, i) + by(tok);
      i += tok.length;
      from = i;
    }
    return out + s.slice(from);
  }
}

/** A fallback matching the vocabulary's chat tokens; chatml (llama.cpp's default too) otherwise. */
function guessFallback(tokenizer: Tokenizer): FallbackName {
  const has = (t: string) => tokenizer.vocab.tokenToId.has(t);
  if (has('<|im_start|>')) return 'chatml';
  if (has('<|start_header_id|>')) return 'llama3';
  if (has('<|user|>') && has('<|assistant|>')) return 'zephyr';
  return 'chatml';
}

function fail(message: string): never {
  throw new ChatTemplateError(message);
}
