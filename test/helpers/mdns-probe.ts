// A tiny mDNS actor for the discovery tests, run inside a test namespace:
//   advertise NAME PORT IFACE NODE_ID   advertise until SIGTERM (prints "ready")
//   browse IFACE TIMEOUT_MS WANT        print the DiscoveryResult as JSON and exit

import { MdnsAdvertiser, MdnsDiscovery } from '../../src/cluster/discovery/mdns.ts';
import { PROTOCOL_VERSION } from '../../src/cluster/caps.ts';

const [mode, ...args] = process.argv.slice(2);
if (mode === 'advertise') {
  const [name, port, iface, nodeId] = args;
  const adv = await MdnsAdvertiser.start({
    name,
    port: Number(port),
    interface: iface,
    caps: {
      protocolVersion: PROTOCOL_VERSION,
      nodeId,
      name,
      arch: process.arch,
      backend: 'js',
      memTotal: 8 * 2 ** 30,
      memAvailable: 4 * 2 ** 30,
      cores: 4,
      throughput: 1e9,
    },
  });
  process.stdout.write('ready\n');
  process.once('SIGTERM', () => {
    void adv.stop().then(() => process.exit(0));
  });
} else if (mode === 'browse') {
  const [iface, timeout, want] = args;
  const d = new MdnsDiscovery({ interface: iface });
  const r = await d.discover({ timeoutMs: Number(timeout), want: want ? Number(want) : undefined });
  await d.close();
  process.stdout.write(`${JSON.stringify(r)}\n`);
  process.exit(0);
} else {
  process.stderr.write('usage: mdns-probe advertise NAME PORT IFACE NODE_ID | browse IFACE TIMEOUT_MS [WANT]\n');
  process.exit(2);
}
