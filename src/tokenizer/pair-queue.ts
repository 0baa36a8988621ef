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
    const { key: k, lefts: l, rights: r, sizes: s } = this;
    // Move the hole up instead of swapping: one write per level.
    let i = this.n++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!(key < k[p] || (key === k[p] && left < l[p]))) break;
      k[i] = k[p];
      l[i] = l[p];
      r[i] = r[p];
      s[i] = s[p];
      i = p;
    }
    k[i] = key;
    l[i] = left;
    r[i] = right;
    s[i] = size;
  }

  /** Removes the first entry into left/right/size; false when empty. */
  pop(): boolean {
    if (this.n === 0) return false;
    const { key: k, lefts: l, rights: r, sizes: s } = this;
    this.left = l[0];
    this.right = r[0];
    this.size = s[0];
    const n = --this.n;
    const lk = k[n];
    const ll = l[n];
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && (k[c + 1] < k[c] || (k[c + 1] === k[c] && l[c + 1] < l[c]))) c++;
      if (!(k[c] < lk || (k[c] === lk && l[c] < ll))) break;
      k[i] = k[c];
      l[i] = l[c];
      r[i] = r[c];
      s[i] = s[c];
      i = c;
    }
    k[i] = lk;
    l[i] = ll;
    r[i] = r[n];
    s[i] = s[n];
    return true;
  }

  private grow(): void {
    const cap = this.key.length * 2;
    const k = new Float64Array(cap);
    k.set(this.key);
    this.key = k;
    const l = new Int32Array(cap);
    l.set(this.lefts);
    this.lefts = l;
    const r = new Int32Array(cap);
    r.set(this.rights);
    this.rights = r;
    const s = new Int32Array(cap);
    s.set(this.sizes);
    this.sizes = s;
  }
}
