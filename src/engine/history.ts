// The tokens at the positions a session holds, and the one check every step goes through: a
// step of n tokens at `start` is taken when start is at most the session's end (before it, the
// session goes back there first: prompt reuse) and the step ends within the context. Whoever
// runs a session — a model slice in this process or on a node, a pipeline over the herd, a
// session that resumes on a new plan — keeps its tokens here.

/** A step that does not fit the session: nothing ran, the session is as it was. */
export class StepError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = 'StepError';
  }
}

export class TokenHistory {
  private readonly ids: number[] = [];

  /** The token at each position the session holds. */
  get tokens(): readonly number[] {
    return this.ids;
  }

  /** Positions the session holds: where the next step may start at the latest. */
  get length(): number {
    return this.ids.length;
  }

  /** Throws StepError unless `n` tokens at `start` can be the session's next step in a context of `ctx`. */
  check(start: number, n: number, ctx: number): void {
    if (!(Number.isInteger(start) && start >= 0 && start <= this.ids.length)) {
      throw new StepError(`step at position ${start}, past the session's end at ${this.ids.length}`);
    }
    if (n < 1) throw new StepError('a step with no tokens');
    if (start + n > ctx)
      throw new StepError(`positions [${start}, ${start + n}) run past the session's context of ${ctx}`);
  }

  /** Forgets the positions from `start` on (their KV entries are about to be overwritten). */
  rewind(start: number): void {
    this.ids.length = start;
  }

  /** The tokens of a step, at the positions after the last one held. */
  push(tokens: readonly number[]): void {
    for (const t of tokens) this.ids.push(t);
  }

  /** A step done: the tokens from `start` on are these. */
  commit(tokens: readonly number[], start: number): void {
    this.rewind(start);
    this.push(tokens);
  }
}
