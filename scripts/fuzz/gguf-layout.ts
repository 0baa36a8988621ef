// Where every field of a GGUF file lies, found by a walk independent of the reader (it trusts
// the file; the fuzzer only walks the valid seed files). The mutators aim at fields by kind:
// counts, string lengths, value and tensor types, dimensions, data offsets.

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
  readonly start: number;
  /** Bytes the field takes (0 for an empty string). */
  readonly width: number;
  /** The metadata key or tensor name it belongs to. */
  readonly owner: string;
  /** For scalars: the metadata type (MetaType number). */
  readonly metaType?: number;
}

export interface Layout {
  readonly fields: readonly Field[];
  /** Where the tensor infos end (before the padding to the data section). */
  readonly infoEnd: number;
  readonly alignment: number;
}

const scalarBytes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
const STRING = 8;
const ARRAY = 9;

export function walkGguf(bytes: Uint8Array): Layout {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fields: Field[] = [];
  let pos = 0;
  const field = (kind: FieldKind, width: number, owner: string, metaType?: number): void => {
    fields.push({ kind, start: pos, width, owner, metaType });
    pos += width;
  };
  const u32 = (kind: FieldKind, owner: string): number => {
    const x = v.getUint32(pos, true);
    field(kind, 4, owner);
    return x;
  };
  const u64 = (kind: FieldKind, owner: string): number => {
    const x = Number(v.getBigUint64(pos, true));
    field(kind, 8, owner);
    return x;
  };
  const string = (owner: string): string => {
    const n = u64('strlen', owner);
    const s = Buffer.from(bytes.subarray(pos, pos + n)).toString('utf8');
    field('string', n, owner);
    return s;
  };
  const value = (type: number, owner: string): void => {
    if (type === STRING) string(owner);
    else if (type === ARRAY) {
      const itemType = u32('item-type', owner);
      const n = u64('count', owner);
      for (let i = 0; i < n; i++) value(itemType, owner);
    } else field('scalar', scalarBytes[type], owner, type);
  };

  field('magic', 4, 'header');
  u32('version', 'header');
  const nTensors = u64('count', 'tensor count');
  const nKv = u64('count', 'metadata count');
  let alignment = 32;
  for (let i = 0; i < nKv; i++) {
    const key = string(`key #${i}`);
    const type = u32('value-type', key);
    value(type, key);
    if (key === 'general.alignment') alignment = v.getUint32(pos - 4, true);
  }
  for (let i = 0; i < nTensors; i++) {
    const name = string(`tensor #${i}`);
    const nDims = u32('n-dims', name);
    for (let d = 0; d < nDims; d++) u64('dim', name);
    u32('tensor-type', name);
    u64('offset', name);
  }
  return { fields, infoEnd: pos, alignment };
}
