// An HTTP client to run inside a test's network namespace, where the test process cannot reach:
// `get URL` prints the body; `stream URL BODY` POSTs the JSON body and prints each server-sent
// event's data as one line as it arrives, then `[END]` (or `[ERROR] message`).

const [mode, url, body] = process.argv.slice(2);

async function main(): Promise<void> {
  if (mode === 'get') {
    const r = await fetch(url);
    process.stdout.write(await r.text());
    return;
  }
  if (mode !== 'stream' || body === undefined) throw new Error('usage: ns-http get URL | stream URL BODY');
  const r = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
  if (!r.ok || !r.body) {
    process.stdout.write(`[HTTP ${r.status}] ${await r.text()}\n`);
    return;
  }
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split('\n')) if (line.startsWith('data: ')) process.stdout.write(`${line.slice(6)}\n`);
    }
  }
  process.stdout.write('[END]\n');
}

main().catch((e: unknown) => {
  process.stdout.write(`[ERROR] ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
