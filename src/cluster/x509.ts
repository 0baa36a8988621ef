// The few X.509 certificates the herd's TLS needs (tls.ts), encoded in DER by hand and signed
// with node:crypto, synchronously: a client or server can then be made from the cluster key at
// the moment it is needed, with no async set-up. Only what OpenSSL checks is written: ECDSA
// P-256 with SHA-256, a common name, validity, basic constraints, key usage, extended key usage,
// the subject alternative name the clients verify, and key identifiers linking leaf and CA.

import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';

/** DER: a tag and its content with the definite length. */
function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  let len: Buffer;
  if (n < 0x80) len = Buffer.from([n]);
  else {
    const bytes: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
    len = Buffer.from([0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([Buffer.from([tag]), len, content]);
}

const seq = (...items: Buffer[]) => tlv(0x30, Buffer.concat(items));
const set = (...items: Buffer[]) => tlv(0x31, Buffer.concat(items));
const octets = (b: Buffer) => tlv(0x04, b);
const bits = (b: Buffer) => tlv(0x03, Buffer.concat([Buffer.from([0]), b]));
const utf8 = (s: string) => tlv(0x0c, Buffer.from(s, 'utf8'));
const explicit = (n: number, inner: Buffer) => tlv(0xa0 + n, inner);

function oid(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split('.').map(Number);
  const out = [a * 40 + b];
  for (const v of rest) {
    const groups: number[] = [];
    for (let x = v; ; x = Math.floor(x / 128)) {
      groups.unshift((x & 0x7f) | (groups.length > 0 ? 0x80 : 0));
      if (x < 128) break;
    }
    out.push(...groups);
  }
  return tlv(0x06, Buffer.from(out));
}

/** A non-negative INTEGER from big-endian bytes. */
function uint(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  const v = b.subarray(i);
  return tlv(0x02, v[0] & 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v);
}

/** UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5). */
function time(d: Date): Buffer {
  const s = d.toISOString().replace(/[-:T]/g, '').slice(0, 14) + 'Z';
  return d.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(s.slice(2))) : tlv(0x18, Buffer.from(s));
}

const name = (cn: string) => seq(set(seq(oid('2.5.4.3'), utf8(cn))));
const ECDSA_SHA256 = seq(oid('1.2.840.10045.4.3.2'));

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return seq(oid(id), ...(critical ? [tlv(0x01, Buffer.from([0xff]))] : []), octets(value));
}

/** RFC 5280's key identifier: SHA-1 of the subject public key's bits. */
export function keyId(publicKey: KeyObject): Buffer {
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  // The last 65 bytes of a P-256 SPKI are the uncompressed point, the BIT STRING's content.
  return createHash('sha1')
    .update(spki.subarray(spki.length - 65))
    .digest();
}

export interface CertificateSpec {
  readonly subject: string;
  readonly issuer: string;
  readonly publicKey: KeyObject;
  readonly issuerKey: KeyObject;
  /** The issuer's public key, for the authority key identifier. */
  readonly issuerPublicKey: KeyObject;
  readonly ca: boolean;
  /** DNS names a client may verify the certificate against (leaves only). */
  readonly dnsNames?: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** A DER X.509 v3 certificate, signed with ECDSA-SHA256 by `issuerKey`. */
export function certificate(c: CertificateSpec): Buffer {
  const serial = randomBytes(16);
  serial[0] &= 0x7f;
  const ext = [
    extension('2.5.29.19', true, c.ca ? seq(tlv(0x01, Buffer.from([0xff]))) : seq()),
    // keyCertSign and cRLSign for the CA (bits 5, 6); digitalSignature for a leaf (bit 0).
    extension('2.5.29.15', true, c.ca ? tlv(0x03, Buffer.from([0x01, 0x06])) : tlv(0x03, Buffer.from([0x07, 0x80]))),
    extension('2.5.29.14', false, octets(keyId(c.publicKey))),
    extension('2.5.29.35', false, seq(tlv(0x80, keyId(c.issuerPublicKey)))),
  ];
  if (!c.ca) {
    // serverAuth and clientAuth: one leaf serves a process both ways.
    ext.push(extension('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.1'), oid('1.3.6.1.5.5.7.3.2'))));
    const names = (c.dnsNames ?? []).map((n) => tlv(0x82, Buffer.from(n, 'ascii')));
    if (names.length > 0) ext.push(extension('2.5.29.17', false, seq(...names)));
  }
  const tbs = seq(
    explicit(0, tlv(0x02, Buffer.from([2]))),
    uint(serial),
    ECDSA_SHA256,
    name(c.issuer),
    seq(time(c.notBefore), time(c.notAfter)),
    name(c.subject),
    c.publicKey.export({ type: 'spki', format: 'der' }),
    explicit(3, seq(...ext)),
  );
  return seq(tbs, ECDSA_SHA256, bits(sign('sha256', tbs, c.issuerKey)));
}

export function pem(label: string, der: Buffer): Buffer {
  const b64 = der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  return Buffer.from(`-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`);
}
