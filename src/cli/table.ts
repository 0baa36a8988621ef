// The CLI's plain-text tables (herd nodes, plan, models): columns padded to their widest cell,
// two spaces apart, the header row first.

/** Writes `rows` (the header first) to stdout as aligned columns. */
export function writeTable(rows: readonly (readonly string[])[]): void {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows)
    process.stdout.write(
      `${r
        .map((c, i) => c.padEnd(widths[i]))
        .join('  ')
        .trimEnd()}\n`,
    );
}
