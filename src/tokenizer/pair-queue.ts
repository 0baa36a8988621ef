// The work queue of the SPM and BPE merge loops: candidate merges of two adjacent symbols,
// smallest key first and, on equal keys, the leftmost pair (llama.cpp's priority_queue order;
// the pop order decides the tokens, ties included).
//
// Entries live in parallel typed arrays, not objects: a long prompt queues millions of
// candidates, and pointer-chasing would make each pop a string of cache misses.

export class PairQueue {
  private key = new Float64Array(64);
  private lefts = new Int32Array(64);
  private rights = new Int32Array(64);
  private sizes = new Int32Array(64);
  private n = 0;

  // The entry most recently popped.
  left = 0;
  right = 0;
  size = 0;

  get length(): number {
    return this.n;
  }

  push(key: number, left: number, right: number, size: number): void {
    if (this.n === this.key.length) this.grow();
    // Move the hole up instead of swapping: one write per level.
    let i = this.n++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(key, left, p)) break;
      this.move(i, p);
      i = p;
    }
    this.key[i] = key;
    this.lefts[i] = left;
    this.rights[i] = right;
    this.sizes[i] = size;
  }

  /** Removes the first entry into left/right/size; false when empty. */
  pop(): boolean {
    if (this.n === 0) return false;
    this.left = this.lefts[0];
    this.right = this.rights[0];
    this.size = this.sizes[0];
    // The last entry sinks from the root; its slot n stays intact until it lands.
    const n = --this.n;
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && this.before(this.key[c + 1], this.lefts[c + 1], c)) c++;
      if (!this.before(this.key[c], this.lefts[c], n)) break;
      this.move(i, c);
      i = c;
    }
    this.move(i, n);
    return true;
  }

  /** Whether an entry (key, left) comes out before entry j. */
  private before(key: number, left: number, j: number): boolean {
    const kj = this.key[j];
    return key < kj || (key === kj && left < this.lefts[j]);
  }

  /** Copies entry `from` into slot `to`. */
  private move(to: number, from: number): void {
    this.key[to] = this.key[from];
    this.lefts[to] = this.lefts[from];
    this.rights[to] = this.rights[from];
    this.sizes[to] = this.sizes[from];
  }

  private grow(): void {
    const cap = this.key.length * 2;
    this.key = widened(this.key, new Float64Array(cap));
    this.lefts = widened(this.lefts, new Int32Array(cap));
    this.rights = widened(this.rights, new Int32Array(cap));
    this.sizes = widened(this.sizes, new Int32Array(cap));
  }
}

/** `to` holding `from` at its start. */
function widened<T extends Float64Array | Int32Array>(from: T, to: T): T {
  to.set(from);
  return to;
}
