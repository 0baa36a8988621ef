// Where every field of a GGUF file lies, in the order the reader reads them, found by a walk
// independent of the reader (it trusts the file: it walks valid files only). The malformed-file
// tests (test/gguf-malformed*.test.ts) patch fields by name and derive from the claims of counts
// and string lengths the error a cut file must give; the GGUF fuzzer (scripts/fuzz) aims its
// mutations at fields by kind.

import { ggmlTypeInfo } from '../../src/ggml/types.ts';

export type FieldKind =
  | 'magic'
  | 'version'
  | 'count' // a u64 item count: tensors, key/values, array items
  | 'strlen' // a u64 string length
  | 'string' // a string's bytes (key, value, tensor name)
  | 'value-type' // u32 metadata value type
  | 'item-type' // u32 array item type
  | 'scalar' // a metadata number or bool
  | 'n-dims' // u32 dimension count of a tensor
  | 'dim' // u64 dimension
  | 'tensor-type' // u32 ggml type id
  | 'offset'; // u64 tensor data offset

export interface Field {
  readonly kind: FieldKind;
  /** A path naming this field alone: 'n_kv', 'kv#0.key.len', 'kv[test.nums].count', 't[a.weight].dim0', … */
  readonly name: string;
  /** The metadata key or tensor name it belongs to ('key #i' / 'tensor #i' for the name itself). */
  readonly owner: string;
  readonly start: number;
  readonly end: number;
  /** For scalars: the metadata type (MetaType number). */
  readonly metaType?: number;
  /** A u64 count the reader bounds by the bytes left: n items of at least min bytes each. */
  readonly count?: { readonly n: bigint; readonly min: number };
  /** A u64 string length the reader bounds by the bytes left. */
  readonly strlen?: bigint;
}

export interface Layout {
  readonly fields: readonly Field[];
  readonly byName: ReadonlyMap<string, Field>;
  /** Where the tensor infos end (before the padding to the data section). */
  readonly infoEnd: number;
  readonly alignment: number;
  /** Per tensor: its data offset in the data section and its byte count. */
  readonly tensors: readonly { readonly name: string; readonly offset: number; readonly nBytes: number }[];
}

// The GGUF value types by number, stated here rather than taken from the reader under test.
const STRING = 8;
const ARRAY = 9;
const scalarBytes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
/** Least bytes an item of each type takes, as the reader bounds counts with. */
const itemMinBytes = (type: number): number => (type === STRING ? 8 : type === ARRAY ? 12 : scalarBytes[type]);

export function walkGguf(bytes: Uint8Array): Layout {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fields: Field[] = [];
  let pos = 0;
  const field = (kind: FieldKind, name: string, owner: string, size: number, extra: Partial<Field> = {}): void => {
    fields.push({ kind, name, owner, start: pos, end: pos + size, ...extra });
    pos += size;
  };
  const u32 = (kind: FieldKind, name: string, owner: string): number => {
    const x = v.getUint32(pos, true);
    field(kind, name, owner, 4);
    return x;
  };
  const u64 = (kind: FieldKind, name: string, owner: string, extra: (n: bigint) => Partial<Field>): bigint => {
    const n = v.getBigUint64(pos, true);
    field(kind, name, owner, 8, extra(n));
    return n;
  };
  const count = (name: string, owner: string, min: number): number =>
    Number(u64('count', name, owner, (n) => ({ count: { n, min } })));
  const string = (name: string, owner: string): string => {
    const n = Number(u64('strlen', `${name}.len`, owner, (strlen) => ({ strlen })));
    const s = Buffer.from(bytes.subarray(pos, pos + n)).toString('utf8');
    field('string', name, owner, n);
    return s;
  };
  const value = (type: number, name: string, owner: string): void => {
    if (type === STRING) string(name, owner);
    else if (type === ARRAY) {
      const itemType = u32('item-type', `${name}.itemType`, owner);
      const n = count(`${name}.count`, owner, itemMinBytes(itemType));
      for (let i = 0; i < n; i++) value(itemType, `${name}[${i}]`, owner);
    } else field('scalar', name, owner, scalarBytes[type], { metaType: type });
  };

  field('magic', 'magic', 'header', 4);
  u32('version', 'version', 'header');
  // A tensor info takes at least 8 + 4 + 4 + 8 bytes, a key/value 8 + 4 + 1.
  const nTensors = count('n_tensors', 'tensor count', 24);
  const nKv = count('n_kv', 'metadata count', 13);
  let alignment = 32;
  for (let i = 0; i < nKv; i++) {
    const key = string(`kv#${i}.key`, `key #${i}`);
    const type = u32('value-type', `kv[${key}].type`, key);
    value(type, `kv[${key}]`, key);
    if (key === 'general.alignment') alignment = v.getUint32(pos - 4, true);
  }
  const tensors: { name: string; offset: number; nBytes: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = string(`tensor#${i}.name`, `tensor #${i}`);
    const nDims = u32('n-dims', `t[${name}].n_dims`, name);
    let n = 1;
    for (let d = 0; d < nDims; d++) n *= Number(u64('dim', `t[${name}].dim${d}`, name, () => ({})));
    const typeId = u32('tensor-type', `t[${name}].type`, name);
    const info = ggmlTypeInfo(typeId);
    if (!info) throw new Error(`tensor ${name} has unknown ggml type ${typeId}: walkGguf walks valid files only`);
    const offset = Number(u64('offset', `t[${name}].offset`, name, () => ({})));
    tensors.push({ name, offset, nBytes: (n / info.blockSize) * info.typeSize });
  }
  return { fields, byName: new Map(fields.map((f) => [f.name, f])), infoEnd: pos, alignment, tensors };
}
