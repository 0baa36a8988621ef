// Mutual TLS rooted in the cluster key. Every holder of the key derives the same herd CA key
// pair from it (HKDF-SHA256 → a P-256 private scalar), so every process can sign itself a fresh
// leaf certificate at start and trust exactly the certificates that chain to that CA key. Both
// ends of every herd channel present such a leaf, so the TLS handshake itself proves, to each
// side, that the other holds the key — bound to that connection; a peer without the key cannot
// finish the handshake, let alone send metadata or a message.
//
// The CA certificate itself is never sent: each process self-signs its own copy with the
// derived key and the same name (ECDSA signatures differ from copy to copy). OpenSSL finds a
// leaf's issuer in the trust store by name and key identifier and checks the leaf's signature
// with that copy's public key, which is the same everywhere.

import {
  createECDH,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
} from 'node:crypto';
import { ChannelCredentials, ServerCredentials, type ChannelOptions } from '@grpc/grpc-js';
import type { ClusterKey } from './key.ts';
import { certificate, pem } from './x509.ts';

/** The name every leaf carries and every client checks (addresses are IPs, often). */
export const TLS_NAME = 'herd';
const CA_NAME = 'herd cluster CA';
/**
 * Wide, fixed validity: a Pi without a real-time clock may boot with a clock years off, and
 * trust here comes from the key, not from time (a leaf lives as long as its process).
 */
const NOT_BEFORE = new Date(Date.UTC(2000, 0, 1));
const NOT_AFTER = new Date(Date.UTC(2099, 11, 31, 23, 59, 59));
/** The order of the P-256 group. */
const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

export interface HerdTls {
  /** This process's copy of the herd CA certificate (PEM). */
  readonly caPem: Buffer;
  /** This process's leaf certificate and its private key (PEM). */
  readonly certPem: Buffer;
  readonly keyPem: Buffer;
  readonly server: ServerCredentials;
  readonly client: ChannelCredentials;
}

/** The herd CA's private key, the same for every holder of `key`. */
export function herdCaKey(key: ClusterKey): KeyObject {
  // 48 bytes reduced modulo n-1, plus one: a scalar in [1, n-1] with negligible bias (FIPS 186-5 A.2.1).
  const okm = Buffer.from(hkdfSync('sha256', key, 'herd.v1 ca', 'p-256 private scalar', 48));
  const d = (BigInt(`0x${okm.toString('hex')}`) % (P256_N - 1n)) + 1n;
  const dBytes = Buffer.from(d.toString(16).padStart(64, '0'), 'hex');
  const ecdh = createECDH('prime256v1');
  ecdh.setPrivateKey(dBytes);
  const point = ecdh.getPublicKey();
  const b64 = (b: Buffer) => b.toString('base64url');
  return createPrivateKey({
    key: { kty: 'EC', crv: 'P-256', d: b64(dBytes), x: b64(point.subarray(1, 33)), y: b64(point.subarray(33, 65)) },
    format: 'jwk',
  });
}

const made = new Map<string, HerdTls>();

/** This process's TLS identity for `key`: made on first use, the same one afterwards. */
export function herdTls(key: ClusterKey): HerdTls {
  const id = key.toString('hex');
  let tls = made.get(id);
  if (!tls) made.set(id, (tls = makeTls(key)));
  return tls;
}

function makeTls(key: ClusterKey): HerdTls {
  const caKey = herdCaKey(key);
  const caPublic = createPublicKey(caKey);
  const caDer = certificate({
    subject: CA_NAME,
    issuer: CA_NAME,
    publicKey: caPublic,
    issuerKey: caKey,
    issuerPublicKey: caPublic,
    ca: true,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
  });
  const leaf = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const leafDer = certificate({
    subject: TLS_NAME,
    issuer: CA_NAME,
    publicKey: leaf.publicKey,
    issuerKey: caKey,
    issuerPublicKey: caPublic,
    ca: false,
    dnsNames: [TLS_NAME],
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
  });
  const caPem = pem('CERTIFICATE', caDer);
  const certPem = pem('CERTIFICATE', leafDer);
  const keyPem = Buffer.from(leaf.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  return {
    caPem,
    certPem,
    keyPem,
    // true: a client without a leaf that chains to the herd CA fails the handshake.
    server: ServerCredentials.createSsl(caPem, [{ private_key: keyPem, cert_chain: certPem }], true),
    client: ChannelCredentials.createSsl(caPem, keyPem, certPem),
  };
}

/** Channel options a herd client needs over TLS: servers are verified by the herd name, not their address. */
export const tlsChannelOptions: ChannelOptions = { 'grpc.ssl_target_name_override': TLS_NAME };
