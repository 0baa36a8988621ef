// Prometheus text exposition, parsed strictly: what a scraper would make of /metrics.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition format (0.0.4), throwing on any line it does not know. */
export function parsePrometheus(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const name = '[a-zA-Z_:][a-zA-Z0-9_:]*';
  // Values are what Go's strconv.ParseFloat takes (the format says so): NaN and Inf in any case.
  const sampleRe = new RegExp(
    `^(${name})(?:\\{(.*)\\})? ([-+]?(?:[0-9]*\\.?[0-9]+(?:[eE][-+]?[0-9]+)?|inf(?:inity)?)|nan)(?: -?\\d+)?$`,
    'i',
  );
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/y;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m: RegExpExecArray | null;
    if (new RegExp(`^# HELP (${name}) .*$`).test(line)) continue;
    if ((m = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`).exec(line))) {
      types.set(m[1], m[2]);
      continue;
    }
    m = sampleRe.exec(line);
    if (!m) throw new Error(`not Prometheus text: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      labelRe.lastIndex = 0;
      let l: RegExpExecArray | null;
      while (labelRe.lastIndex < m[2].length && (l = labelRe.exec(m[2])))
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      if (labelRe.lastIndex !== m[2].length) throw new Error(`bad labels: ${line}`);
    }
    const word = m[3].toLowerCase().replace(/^\+/, '');
    const v =
      word === 'nan' ? NaN : word.startsWith('inf') ? Infinity : word.startsWith('-inf') ? -Infinity : Number(m[3]);
    samples.push({ name: m[1], labels, value: v });
  }
  return { samples, types };
}

/** The sum of a metric's samples whose labels include these. */
export function sum(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}
