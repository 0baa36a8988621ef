import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GgufFile, type MetadataValue } from '../src/gguf/reader.ts';
import { TokenAttr, Tokenizer, TokenizerError, type TokenizerErrorCode } from '../src/tokenizer/index.ts';
import { bundledModel, fixtureModels, fixtureVocab } from './helpers/paths.ts';

const vocabDir = fixtureVocab;
const referencePath = join(fixtureModels, 'stories260K.reference.txt');
const storiesPath = bundledModel;

const tokenizers = new Map<string, Tokenizer>();
function tokenizerOf(path: string): Tokenizer {
  let tok = tokenizers.get(path);
  if (!tok) {
    tok = Tokenizer.fromGguf(GgufFile.open(path));
    tokenizers.set(path, tok);
  }
  return tok;
}
const vocab = (name: string) => tokenizerOf(`${vocabDir}ggml-vocab-${name}.gguf`);
const stories = () => tokenizerOf(storiesPath);

/**
 * llama.cpp's test-tokenizer-0 format: the .inp file is the test strings, each followed by
 * "\n__ggml_vocab_test__\n" (so a string keeps its own leading and inner newlines, and one
 * trailing newline of the file belongs to the separator); the .out file has one line of
 * space-separated ids per string.
 */
function readVectors(base: string): { text: string; ids: number[] }[] {
  const raw = readFileSync(`${base}.inp`, 'utf8');
  const sep = '\n__ggml_vocab_test__\n';
  const inputs: string[] = [];
  for (let pos = 0; pos < raw.length;) {
    const next = raw.indexOf(sep, pos);
    if (next < 0) {
      inputs.push(raw.slice(pos));
      break;
    }
    inputs.push(raw.slice(pos, next));
    pos = next + sep.length;
  }
  const lines = readFileSync(`${base}.out`, 'utf8').split('\n');
  if (lines.at(-1) === '') lines.pop();
  if (lines.length !== inputs.length)
    throw new Error(`${base}: ${inputs.length} inputs but ${lines.length} output lines`);
  return inputs.map((text, i) => {
    const line = lines[i].trim();
    return { text, ids: line === '' ? [] : line.split(' ').map(Number) };
  });
}

const vectorFiles = readdirSync(vocabDir)
  .filter((f) => f.endsWith('.gguf.inp'))
  .map((f) => f.slice(0, -'.inp'.length))
  .sort();

test('the shared vocab folder has the expected llama.cpp test vectors', (t) => {
  t.deepEqual(
    vectorFiles,
    [
      'bert-bge',
      'deepseek-coder',
      'deepseek-llm',
      'falcon',
      'gpt-2',
      'llama-spm',
      'mpt',
      'phi-3',
      'refact',
      'starcoder',
    ].map((n) => `ggml-vocab-${n}.gguf`),
  );
});

for (const file of vectorFiles) {
  test(`${file} tokenizes every test-tokenizer-0 vector exactly as llama.cpp`, (t) => {
    const tok = tokenizerOf(vocabDir + file);
    const vectors = readVectors(vocabDir + file);
    const failures: string[] = [];
    for (const { text, ids } of vectors) {
      const got = tok.encode(text, { addSpecial: false, parseSpecial: false });
      if (got.join(' ') !== ids.join(' ')) {
        failures.push(`${JSON.stringify(text)}\n    expected ${ids.join(' ')}\n    got      ${got.join(' ')}`);
      }
    }
    t.log(`${vectors.length - failures.length}/${vectors.length} vectors match`);
    t.deepEqual(failures, [], `${failures.length} of ${vectors.length} strings differ:\n  ${failures.join('\n  ')}`);
  });
}

for (const name of ['baichuan', 'gpt-neox']) {
  test(`ggml-vocab-${name}.gguf (no vectors upstream) loads and round-trips plain text`, (t) => {
    const tok = vocab(name);
    t.true(tok.vocabSize > 50000);
    const text = 'Hello world, this is a test.';
    const ids = tok.encode(text, { addSpecial: false });
    t.true(ids.length > 0 && ids.length < text.length);
    t.is(tok.decode(ids), text);
  });
}

test('gpt-neox without tokenizer.ggml.pre falls back to the default pre-tokenizer, with a warning', (t) => {
  const tok = vocab('gpt-neox');
  t.is(tok.vocab.pre, 'default');
  t.true(tok.vocab.warnings.some((w) => w.includes('tokenizer.ggml.pre')));
});

/** Section 2 of the llama.cpp reference: `"TEXT"` then `  -> [ids]` (llama-tokenize, BOS added). */
function referenceTokenizations(): { text: string; ids: number[] }[] {
  const ref = readFileSync(referencePath, 'utf8');
  const section = ref.slice(ref.indexOf('\n2. Tokenization'), ref.indexOf('\n3. '));
  const out: { text: string; ids: number[] }[] = [];
  const re = /^(".*")\n\s+-> (\[[\d, ]*\])$/gm;
  for (let m = re.exec(section); m; m = re.exec(section))
    out.push({ text: JSON.parse(m[1]) as string, ids: JSON.parse(m[2]) as number[] });
  return out;
}

test('stories260K tokenizes the reference prompts as llama-tokenize (BOS added)', (t) => {
  const cases = referenceTokenizations();
  t.is(cases.length, 7);
  for (const { text, ids } of cases) t.deepEqual(stories().encode(text), ids, JSON.stringify(text));
});

test('stories260K pieces match llama-tokenize for the reference prompts', (t) => {
  const tok = stories();
  const expected: [number, string][] = [
    [1, '<s>'],
    [403, ' Once'],
    [407, ' upon'],
    [261, ' a'],
    [378, ' time'],
    [346, ' He'],
    [306, 'll'],
    [414, 'o'],
    [263, ' w'],
    [304, 'or'],
    [341, 'ld'],
    [291, ' The'],
    [376, ' little'],
    [298, ' g'],
    [315, 'ir'],
    [421, 'l'],
    [395, ' named'],
    [317, ' Lily'],
  ];
  for (const [id, piece] of expected) t.is(tok.piece(id), piece, `token ${id}`);
  t.is(tok.piece(1, { special: false }), '');
  t.is(tok.piece(13), '\n'); // <0x0A>
});

test('stories260K streams the greedy continuation exactly as llama-server returned it', (t) => {
  const ref = JSON.parse(readFileSync(referencePath.replace(/\.txt$/, '.json'), 'utf8')) as {
    prompt: string;
    prompt_tokens: number[];
    generated_tokens: number[];
    content: string;
  };
  const tok = stories();
  t.deepEqual(tok.encode(ref.prompt), ref.prompt_tokens);
  const stream = tok.stream();
  let text = '';
  for (const id of ref.generated_tokens) text += stream.push(id);
  text += stream.flush();
  t.is(text, ref.content);
  t.true(text.startsWith(', there was a little girl'));
  // llama-cli echoes the prompt with its SentencePiece space, then the continuation.
  t.is(tok.decode([...ref.prompt_tokens, ...ref.generated_tokens]), ` ${ref.prompt}${ref.content}`);
});

test('detokenize drops the SPM leading space unless a BOS takes it, as llama_detokenize', (t) => {
  const tok = stories();
  t.is(tok.decode([403, 407, 261, 378]), 'Once upon a time');
  t.is(tok.decode([1, 403, 407, 261, 378]), ' Once upon a time');
  t.is(tok.decode([1, 403, 407, 261, 378], { removeSpecial: true }), ' Once upon a time');
  t.is(tok.decode([1, 403, 2], { unparseSpecial: true }), '<s> Once</s>');
});

test('parseSpecial turns "<s>" into the BOS id; by default it is plain text', (t) => {
  const tok = stories();
  t.deepEqual(tok.encode('<s>', { addSpecial: false, parseSpecial: true }), [1]);
  const plain = tok.encode('<s>', { addSpecial: false });
  t.false(plain.includes(1));
  t.true(plain.length > 1);
  t.deepEqual(tok.encode('<s>Once</s>', { parseSpecial: true }), [
    1,
    1,
    ...tok.encode('Once', { addSpecial: false }),
    2,
  ]);
});

test('streaming decode holds the bytes of a split emoji until the character is complete', (t) => {
  const tok = stories();
  const ids = tok.encode('😀', { addSpecial: false }); // "▁" then the emoji's four byte tokens
  t.deepEqual(
    ids.map((id) => tok.vocab.tokens[id]),
    ['▁', '<0xF0>', '<0x9F>', '<0x98>', '<0x80>'],
  );
  const stream = tok.stream();
  t.deepEqual(
    ids.map((id) => stream.push(id)),
    [' ', '', '', '', '😀'],
  );
  t.is(stream.flush(), '');
});

test('streaming decode of GPT-2 byte-level tokens waits for the whole character', (t) => {
  const tok = vocab('gpt-2');
  const ids = tok.encode('🦙', { addSpecial: false });
  t.true(ids.length > 1);
  const stream = tok.stream();
  const outs = ids.map((id) => stream.push(id));
  t.deepEqual(outs, [...ids.slice(1).map(() => ''), '🦙']);
});

test('a stream flushed in the middle of a character yields U+FFFD instead of hanging', (t) => {
  const tok = stories();
  const stream = tok.stream();
  t.is(stream.push(tok.vocab.tokenToId.get('<0xF0>') as number), '');
  t.is(stream.flush(), '\uFFFD');
  t.is(stream.push(tok.vocab.tokenToId.get('<0x41>') as number), 'A');
});

const roundTrip = [
  'Once upon a time',
  ' leading space',
  'two  spaces and a trailing one ',
  'line one\nline two\n\n\ttabbed',
  'Ünïcödé 😀 🦙 — “quotes”',
  '我想在apple工作1314151天～',
  '',
];

for (const name of ['stories260K', 'llama-spm', 'phi-3']) {
  test(`SPM decode(encode(text)) gives the text back (${name})`, (t) => {
    const tok = name === 'stories260K' ? stories() : vocab(name);
    for (const text of roundTrip) {
      t.is(tok.decode(tok.encode(text, { addSpecial: false })), text, JSON.stringify(text));
      t.is(tok.decode(tok.encode(text), { removeSpecial: true }), text === '' ? '' : ` ${text}`, JSON.stringify(text));
    }
  });
}

test('BPE decode(encode(text)) gives the text back (no clean-up needed)', (t) => {
  for (const name of ['gpt-2', 'deepseek-llm', 'deepseek-coder', 'falcon', 'starcoder', 'refact', 'mpt']) {
    const tok = vocab(name);
    for (const text of roundTrip)
      t.is(tok.decode(tok.encode(text, { addSpecial: false })), text, `${name} ${JSON.stringify(text)}`);
  }
});

test('GPT-2 detokenize cleans spaces before punctuation as llama.cpp (clean_spaces)', (t) => {
  const tok = vocab('gpt-2');
  t.is(tok.decode(tok.encode("Hello , world ! It 's here .", { addSpecial: false })), "Hello, world! It's here.");
  t.is(vocab('deepseek-llm').decode(vocab('deepseek-llm').encode('a , b', { addSpecial: false })), 'a , b'); // clean_spaces off
});

test('WordPiece adds [CLS] and [SEP] and lowercases, strips accents', (t) => {
  const tok = vocab('bert-bge');
  const ids = tok.encode('Héllo World');
  t.is(tok.vocab.special.cls, 101);
  t.is(ids[0], 101);
  t.is(ids.at(-1), 102);
  t.deepEqual(ids.slice(1, -1), tok.encode('hello world', { addSpecial: false }));
});

test('BOS, EOS and end-of-generation ids come from the vocabulary', (t) => {
  t.is(stories().bos, 1);
  t.is(stories().eos, 2);
  t.true(stories().isEog(2));
  t.false(stories().isEog(1));
  const phi3 = vocab('phi-3');
  t.is(phi3.eos, 32000);
  t.true(phi3.isEog(32000));
  t.true(phi3.isEog(32007)); // <|end|>
  t.true(vocab('gpt-2').isEog(50256));
  t.is(vocab('deepseek-llm').bos, 100000);
  t.deepEqual(vocab('deepseek-llm').encode('Hi').slice(0, 1), [100000]); // add_bos_token true
  t.deepEqual(vocab('gpt-2').encode('Hi'), vocab('gpt-2').encode('Hi', { addSpecial: false })); // gpt-2 adds none
});

test('user-defined tokens are matched in raw text even without parseSpecial (mpt whitespace runs)', (t) => {
  const tok = vocab('mpt');
  const id = tok.vocab.tokenToId.get('    ') as number;
  t.truthy(tok.vocab.attrs[id] & TokenAttr.UserDefined);
  t.true(tok.encode('a    b', { addSpecial: false }).includes(id));
});

test("character classes follow llama.cpp's Unicode 15.1 table, not the ICU of this Node build", (t) => {
  // U+13700 (Egyptian hieroglyph, assigned in Unicode 16) is unassigned for llama.cpp, so it is
  // no \p{L}; ids checked against llama.cpp (node-llama-cpp 3.21.1) for this vocabulary.
  t.deepEqual(vocab('deepseek-coder').encode('= \u{13700}', { addSpecial: false }), [4084, 170, 228, 237, 209]);
  t.deepEqual(vocab('deepseek-coder').encode('= \u{13000}', { addSpecial: false }), [28, 207, 170, 228, 209, 209]);
});

test('a 100k-token vocabulary loads (the time is a benchmark figure, logged: CI machines differ and are shared)', (t) => {
  const start = performance.now();
  const tok = Tokenizer.fromGguf(GgufFile.open(`${vocabDir}ggml-vocab-deepseek-llm.gguf`));
  const ms = performance.now() - start;
  t.log(`deepseek-llm: ${tok.vocabSize} tokens, ${tok.vocab.mergeRanks.size} merges, loaded in ${ms.toFixed(0)} ms`);
  t.true(tok.vocabSize > 100_000);
});

test('encoding long input is not quadratic', (t) => {
  const tok = vocab('llama-spm');
  const unit = "Hello, y'all! How are you 😁 ?我想在apple工作 ";
  // Both sizes timed in this run, so the ratio holds on any CPU; the fastest of three keeps a
  // pause of a loaded machine (another process, a GC) out of either.
  const time = (reps: number) => {
    const text = unit.repeat(reps);
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      tok.encode(text);
      best = Math.min(best, performance.now() - start);
    }
    return best;
  };
  time(200); // warm up
  const small = time(2000);
  const large = time(20000);
  t.log(`${small.toFixed(0)} ms for 2000 repeats, ${large.toFixed(0)} ms for 20000`);
  t.true(large < small * 40, 'ten times the text should take nowhere near a hundred times as long');
});

function source(entries: Record<string, MetadataValue>) {
  return { path: '/models/broken.gguf', metadata: new Map(Object.entries(entries)) };
}

const errorCases: [string, Record<string, MetadataValue>, TokenizerErrorCode, string][] = [
  ['no tokenizer at all', {}, 'missing-key', 'tokenizer.ggml.model'],
  [
    'an unsupported tokenizer',
    { 'tokenizer.ggml.model': 't5', 'tokenizer.ggml.tokens': ['a'] },
    'unsupported-model',
    'tokenizer.ggml.model',
  ],
  ['no token list', { 'tokenizer.ggml.model': 'llama' }, 'missing-key', 'tokenizer.ggml.tokens'],
  [
    'tokens that are not strings',
    { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': ['a', 3] },
    'bad-value',
    'tokenizer.ggml.tokens',
  ],
  [
    'too few scores',
    { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': ['a', 'b'], 'tokenizer.ggml.scores': [0] },
    'bad-value',
    'tokenizer.ggml.scores',
  ],
  [
    'a duplicate token',
    { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': ['a', 'b', 'a'] },
    'duplicate-token',
    'tokenizer.ggml.tokens',
  ],
  [
    'BPE without merges',
    { 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'gpt-2', 'tokenizer.ggml.tokens': ['a'] },
    'missing-key',
    'tokenizer.ggml.merges',
  ],
  [
    'an unknown pre-tokenizer',
    {
      'tokenizer.ggml.model': 'gpt2',
      'tokenizer.ggml.pre': 'nope',
      'tokenizer.ggml.tokens': ['a'],
      'tokenizer.ggml.merges': [],
    },
    'unknown-pre',
    'tokenizer.ggml.pre',
  ],
  [
    'a bool of the wrong type',
    { 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': ['a', 'b', 'c'], 'tokenizer.ggml.add_bos_token': 1 },
    'bad-value',
    'tokenizer.ggml.add_bos_token',
  ],
];

for (const [what, entries, code, key] of errorCases) {
  test(`a vocabulary with ${what} is refused with a TokenizerError naming the file and key`, (t) => {
    const err = t.throws(() => Tokenizer.fromGguf(source(entries)), { instanceOf: TokenizerError });
    t.is(err?.code, code);
    t.is(err?.key, key);
    t.true(err?.message.startsWith(`/models/broken.gguf: ${key}: `), err?.message);
  });
}

test('an id outside the vocabulary is a RangeError, not undefined text', (t) => {
  t.throws(() => stories().decode([512]), { instanceOf: RangeError });
  t.throws(() => stories().piece(-1), { instanceOf: RangeError });
});
