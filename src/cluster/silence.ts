// A watchdog for a stream that should keep talking. touch() on each message only reads the
// clock; the one timer re-arms itself for what is left, so a stream with a message per token
// does not set and clear a timer per token.

export interface Silence {
  /** Something arrived. */
  touch(): void;
  stop(): void;
}

/** Calls onSilent once nothing has been touched for `ms`. */
export function watchSilence(ms: number, onSilent: () => void): Silence {
  let last = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const check = () => {
    const quiet = performance.now() - last;
    if (quiet >= ms) {
      timer = undefined;
      onSilent();
    } else timer = setTimeout(check, ms - quiet);
  };
  timer = setTimeout(check, ms);
  return {
    touch: () => {
      last = performance.now();
    },
    stop: () => clearTimeout(timer),
  };
}
