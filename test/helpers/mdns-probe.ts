// A tiny mDNS actor for the discovery tests, run inside a test namespace:
//   advertise NAME PORT IFACE NODE_ID   advertise until SIGTERM (prints "ready")
//   browse IFACE TIMEOUT_MS WANT        print the DiscoveryResult as JSON and exit
//   spoof IFACE NODE_ID INSTANCE PORT   a keyless fake of node NODE_ID: answers Info in plaintext on
//                                       PORT, advertises NODE_ID, and sends a goodbye for the real
//                                       node's INSTANCE (e.g. real._herd._tcp.local) every 100 ms

import { Server, ServerCredentials } from '@grpc/grpc-js';
import { Bonjour } from 'bonjour-service';
import { MdnsAdvertiser, MdnsDiscovery } from '../../src/cluster/discovery/mdns.ts';
import { PROTOCOL_VERSION } from '../../src/cluster/caps.ts';
import { interfaceIpv4 } from '../../src/cluster/net.ts';
import { HerdNodeService, type NodeInfo } from '../../src/cluster/wire.ts';

const caps = (nodeId: string, name: string) => ({
  protocolVersion: PROTOCOL_VERSION,
  nodeId,
  name,
  arch: process.arch,
  backend: 'js',
  memTotal: 8 * 2 ** 30,
  memAvailable: 4 * 2 ** 30,
  cores: 4,
  throughput: 1e9,
});

const [mode, ...args] = process.argv.slice(2);
if (mode === 'advertise') {
  const [name, port, iface, nodeId] = args;
  const adv = await MdnsAdvertiser.start({
    name,
    port: Number(port),
    interface: iface,
    caps: caps(nodeId, name),
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
} else if (mode === 'spoof') {
  const [iface, nodeId, instance, port] = args;
  const server = new Server();
  const info = { ...caps(nodeId, 'fake'), platform: 'linux', threads: 1, version: '0', authRequired: false };
  server.addService(HerdNodeService, {
    info: (_call: unknown, cb: (e: null, r: Partial<NodeInfo>) => void) => cb(null, info),
  });
  await new Promise<number>((resolve, reject) =>
    server.bindAsync(`0.0.0.0:${port}`, ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const adv = await MdnsAdvertiser.start({
    name: 'fake',
    port: Number(port),
    interface: iface,
    caps: caps(nodeId, 'fake'),
  });
  const sender = new Bonjour({ interface: interfaceIpv4(iface), bind: '0.0.0.0' } as object);
  const mdns = (sender as unknown as { server: { mdns: { respond(p: object): void } } }).server.mdns;
  const goodbye = () => mdns.respond({ answers: [{ name: '_herd._tcp.local', type: 'PTR', ttl: 0, data: instance }] });
  const timer = setInterval(goodbye, 100);
  process.stdout.write('ready\n');
  process.once('SIGTERM', () => {
    clearInterval(timer);
    server.forceShutdown();
    void adv.stop().then(() => sender.destroy(() => process.exit(0)));
  });
} else {
  process.stderr.write(
    'usage: mdns-probe advertise NAME PORT IFACE NODE_ID | browse IFACE TIMEOUT_MS [WANT] | spoof IFACE NODE_ID INSTANCE PORT\n',
  );
  process.exit(2);
}
