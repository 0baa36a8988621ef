// Structured logs: one JSON object per event, one line, on stderr.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Record<string, string | number | boolean | null | undefined | readonly (string | number)[]>;

export interface Logger {
  log(level: LogLevel, event: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

export function jsonLogger(
  base: LogFields = {},
  write: (line: string) => void = (l) => process.stderr.write(l),
): Logger {
  return {
    log(level, event, fields = {}) {
      write(`${JSON.stringify({ t: new Date().toISOString(), level, event, ...base, ...fields })}\n`);
    },
    child(fields) {
      return jsonLogger({ ...base, ...fields }, write);
    },
  };
}

export const silentLogger: Logger = {
  log() {},
  child() {
    return silentLogger;
  },
};
