// Fair admission: at most `size` holders at once, the rest wait in arrival order. A waiter
// whose signal aborts leaves the line at once. The API's session slots per request (how many
// KV caches exist).

export type Release = () => void;

interface Waiter {
  readonly grant: (release: Release) => void;
  readonly refuse: (e: Error) => void;
}

export class AbortedError extends Error {
  constructor() {
    super('aborted while waiting in the queue');
    this.name = 'AbortedError';
  }
}

export class FairQueue {
  private held = 0;
  private readonly line: Waiter[] = [];
  /** Called whenever the number holding or waiting changes. */
  onChange: () => void = () => {};

  constructor(readonly size: number) {
    if (!(Number.isInteger(size) && size >= 1)) throw new RangeError(`queue size must be an integer >= 1, got ${size}`);
  }

  get active(): number {
    return this.held;
  }

  get waiting(): number {
    return this.line.length;
  }

  acquire(signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) return Promise.reject(new AbortedError());
    if (this.held < this.size && this.line.length === 0) {
      this.held++;
      this.onChange();
      return Promise.resolve(this.releaser());
    }
    return new Promise<Release>((resolve, reject) => {
      const onAbort = () => {
        const i = this.line.indexOf(waiter);
        if (i >= 0) this.line.splice(i, 1);
        this.onChange();
        reject(new AbortedError());
      };
      const waiter: Waiter = {
        grant: (release) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
        refuse: (e) => {
          signal?.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.line.push(waiter);
      this.onChange();
    });
  }

  /** Refuses everyone waiting (the server is closing). */
  drain(e: Error): void {
    for (const w of this.line.splice(0)) w.refuse(e);
    this.onChange();
  }

  private releaser(): Release {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.line.shift();
      // The slot passes straight to the next in line: nobody can jump the queue in between.
      if (next) next.grant(this.releaser());
      else this.held--;
      this.onChange();
    };
  }
}
