import test from 'ava';
import { createPublicKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { Metadata } from '@grpc/grpc-js';
import { Authenticator, authMetadata } from '../src/cluster/auth.ts';
import { generateClusterKey, loadClusterKey } from '../src/cluster/key.ts';
import { herdCaKey, herdTls, TLS_NAME } from '../src/cluster/tls.ts';
import { certificate } from '../src/cluster/x509.ts';

const KEY = Buffer.from('cluster-key-unit-test-0123456789abcdef');
const GENERATE = '/herd.v1.HerdCoordinator/Generate';

test('keys under 128 bits are refused with how to make one; herd keygen makes a 256-bit one', (t) => {
  for (const short of ['12345678', 'correct horse battery', 'a'.repeat(31)]) {
    const e = t.throws(() => loadClusterKey({ clusterKey: short }));
    t.regex(e.message, /at least 32 .*herd keygen/);
  }
  t.deepEqual(loadClusterKey({ clusterKey: ` ${'a'.repeat(32)}\n` }), Buffer.from('a'.repeat(32)));
  const made = generateClusterKey();
  t.regex(made, /^[0-9a-f]{64}$/);
  t.not(generateClusterKey(), made);
  t.deepEqual(loadClusterKey({ clusterKey: made }), Buffer.from(made));
});

test('every holder of a key derives the same herd CA key; another key derives another', (t) => {
  const spki = (k: Buffer) => createPublicKey(herdCaKey(k)).export({ type: 'spki', format: 'der' });
  t.deepEqual(spki(KEY), spki(Buffer.from(KEY)));
  t.notDeepEqual(spki(KEY), spki(Buffer.from('another-key-entirely-0123456789abcdef')));
});

test("a leaf chains to any copy of its herd's CA certificate, and to no other herd's", (t) => {
  const tls = herdTls(KEY);
  const leaf = new X509Certificate(tls.certPem);
  t.is(leaf.subjectAltName, `DNS:${TLS_NAME}`);
  t.false(leaf.ca);
  // Another process's copy: the same derived key and name, its own (randomised) ECDSA signature.
  const caKey = herdCaKey(Buffer.from(KEY));
  const caPublic = createPublicKey(caKey);
  const when = { notBefore: new Date(Date.UTC(2000, 0, 1)), notAfter: new Date(Date.UTC(2099, 0, 1)) };
  const spec = { subject: 'herd cluster CA', issuer: 'herd cluster CA', publicKey: caPublic, issuerKey: caKey };
  const copy = new X509Certificate(certificate({ ...spec, issuerPublicKey: caPublic, ca: true, ...when }));
  t.notDeepEqual(copy.raw, new X509Certificate(tls.caPem).raw);
  t.true(copy.ca);
  t.true(leaf.checkIssued(copy));
  t.true(leaf.verify(copy.publicKey));
  // The same name under another key: the signature does not verify.
  const stranger = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const fake = new X509Certificate(
    certificate({
      ...spec,
      publicKey: stranger.publicKey,
      issuerKey: stranger.privateKey,
      issuerPublicKey: stranger.publicKey,
      ca: true,
      ...when,
    }),
  );
  t.false(leaf.verify(fake.publicKey));
});

test('a flood of Challenge nonces does not crowd out a pending one (herd serve --grpc-port)', (t) => {
  const auth = new Authenticator(KEY);
  const mine = auth.issue();
  for (let i = 0; i < 20_000; i++) auth.issue();
  t.is(auth.check(authMetadata(KEY, mine, GENERATE), GENERATE), undefined);
  // Single use, bound to the key and the method, and only nonces this server made.
  t.is(auth.check(authMetadata(KEY, mine, GENERATE), GENERATE), 'already used nonce');
  const other = auth.issue();
  t.is(auth.check(authMetadata(KEY, other, '/herd.v1.HerdCoordinator/Deliver'), GENERATE), 'wrong cluster key');
  t.is(auth.check(authMetadata(Buffer.from('x'.repeat(32)), auth.issue(), GENERATE), GENERATE), 'wrong cluster key');
  const forged = Buffer.from(auth.issue());
  forged[20] ^= 1;
  t.is(auth.check(authMetadata(KEY, forged, GENERATE), GENERATE), 'unknown nonce');
  t.is(auth.check(new Metadata(), GENERATE), 'missing cluster key proof');
  t.is(new Authenticator(KEY).check(authMetadata(KEY, auth.issue(), GENERATE), GENERATE), 'unknown nonce');
});
