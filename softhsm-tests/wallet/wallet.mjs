// A scripted holder wallet: redeems an OpenID4VCI 1.0 offer with an
// independent client library (@openid4vc/openid4vci) and a phone key made
// by jose, and prints what it received as one JSON line. The issuer's TLS
// CA comes from NODE_EXTRA_CA_CERTS.
//
//   node wallet.mjs --offer 'openid-credential-offer://?credential_offer_uri=…' --tx-code 123456
//
// The IC-card channel: --card-cert CARD.pem --card-sign SCRIPT adds the
// card chip's signature (`card_proof`, typ dojang-card-proof+jwt) over the
// issuer, the nonce and the phone key's thumbprint; SCRIPT IN OUT is run
// with IN holding the SHA-256 of the signing input and writes the chip's
// raw r||s signature to OUT (a SoftHSM token plays the card in the tests).
//
// Exit 0 with {"format", "credential", "jwk", "notification_id", …} on
// stdout; exit 1 with {"error", "status", "body"} when the issuer refused.

import { execFileSync } from 'node:child_process';
import { createHash, randomBytes, verify as cryptoVerify, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { parseIssuerSigned } from '@animo-id/mdoc';
import { clientAuthenticationAnonymous } from '@openid4vc/oauth2';
import { Openid4vciClient } from '@openid4vc/openid4vci';
import { digest } from '@sd-jwt/crypto-nodejs';
import { SDJwtVcInstance } from '@sd-jwt/sd-jwt-vc';
import * as jose from 'jose';

const { values: args } = parseArgs({
  options: {
    offer: { type: 'string' },
    'tx-code': { type: 'string' },
    // Skip the notification (a wallet that crashed before storing it).
    'no-notification': { type: 'boolean', default: false },
    'card-cert': { type: 'string' },
    // Ask for a batch: this many credentials, each on a key of its own.
    batch: { type: 'string', default: '1' },
    'card-sign': { type: 'string' },
  },
});
if (!args.offer || !args['tx-code']) {
  console.error('usage: node wallet.mjs --offer URI --tx-code DIGITS');
  process.exit(2);
}

// One phone key per credential of the batch (the first is "the" key).
const keys = [];
for (let i = 0; i < Number(args.batch); i++) {
  const { privateKey, publicKey } = await jose.generateKeyPair('ES256', { extractable: true });
  keys.push({ privateKey, publicJwk: await jose.exportJWK(publicKey) });
}
const publicJwk = keys[0].publicJwk;
const privateKeyOf = (jwk) => keys.find((k) => k.publicJwk.x === jwk.x).privateKey;

const callbacks = {
  fetch,
  hash: (data, alg) => new Uint8Array(createHash(alg.replace('-', '')).update(data).digest()),
  generateRandom: (n) => new Uint8Array(randomBytes(n)),
  clientAuthentication: clientAuthenticationAnonymous(),
  signJwt: async (signer, { header, payload }) => ({
    jwt: await new jose.SignJWT(payload)
      .setProtectedHeader(header)
      .sign(privateKeyOf(signer.publicJwk)),
    signerJwk: signer.publicJwk,
  }),
};

const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

/** The card chip's signature over the issuer, the nonce and the phone key. */
async function cardProof(issuer, nonce) {
  const cert = new X509Certificate(readFileSync(args['card-cert']));
  const header = { typ: 'dojang-card-proof+jwt', alg: 'ES256', x5c: [cert.raw.toString('base64')] };
  const payload = {
    aud: issuer,
    nonce,
    iat: Math.floor(Date.now() / 1000),
    phone_jkt: await jose.calculateJwkThumbprint(publicJwk, 'sha256'),
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const dir = mkdtempSync(join(tmpdir(), 'card-'));
  writeFileSync(join(dir, 'in'), createHash('sha256').update(input).digest());
  execFileSync(args['card-sign'], [join(dir, 'in'), join(dir, 'out')]);
  return `${input}.${b64url(readFileSync(join(dir, 'out')))}`;
}

/**
 * What a wallet checks of what it received, with libraries of its own: an
 * SD-JWT VC's issuer signature (x5c), disclosures and status (fetched and
 * verified; it must be valid), an mdoc's structure and doctype; each bound
 * to the key that proved it.
 */
async function check(format, configuration, credential, jwk) {
  if (format === 'dc+sd-jwt') {
    // The signature by the key of the JWS's own x5c (the credential's DS,
    // or the status list's key): chains are the verifiers' business.
    const verifier = async (data, signature) => {
      const header = JSON.parse(Buffer.from(data.split('.')[0], 'base64url'));
      const cert = new X509Certificate(Buffer.from(header.x5c[0], 'base64'));
      const hash = header.alg === 'ES384' ? 'sha384' : 'sha256';
      return cryptoVerify(hash, Buffer.from(data), { key: cert.publicKey, dsaEncoding: 'ieee-p1363' },
        Buffer.from(signature, 'base64url'));
    };
    const sdjwt = new SDJwtVcInstance({ hasher: digest, verifier, statusVerifier: verifier });
    const { payload } = await sdjwt.verify(credential);
    if (payload.vct !== configuration.vct) throw new Error(`vct ${payload.vct}`);
    if (payload.cnf?.jwk?.x !== jwk.x) throw new Error('not bound to the proved key');
    return;
  }
  const doc = parseIssuerSigned(Buffer.from(credential, 'base64url'), configuration.doctype);
  const elements = doc.getIssuerNameSpace(configuration.doctype);
  if (!elements?.get('given_name')) throw new Error('no given_name');
  const deviceKey = doc.issuerSigned.issuerAuth.decodedPayload.deviceKeyInfo.deviceKey;
  if (Buffer.from(deviceKey.get(-2)).toString('base64url') !== jwk.x) {
    throw new Error('not bound to the proved key');
  }
}

async function main() {
  const client = new Openid4vciClient({ callbacks });
  const offer = await client.resolveCredentialOffer(args.offer);
  const issuerMetadata = await client.resolveIssuerMetadata(offer.credential_issuer);
  const { accessTokenResponse } = await client.retrievePreAuthorizedCodeAccessTokenFromOffer({
    credentialOffer: offer,
    issuerMetadata,
    txCode: args['tx-code'],
  });
  const configurationId = offer.credential_configuration_ids[0];
  const { c_nonce: nonce } = await client.requestNonce({ issuerMetadata });
  // A batch shares the one nonce (OpenID4VCI 1.0 §7).
  const jwts = [];
  for (const key of keys) {
    const { jwt } = await client.createCredentialRequestJwtProof({
      issuerMetadata,
      credentialConfigurationId: configurationId,
      signer: { method: 'jwk', alg: 'ES256', publicJwk: key.publicJwk },
      nonce,
    });
    jwts.push(jwt);
  }
  const accessToken = accessTokenResponse.access_token;
  const additionalRequestPayload = args['card-cert']
    ? { card_proof: await cardProof(offer.credential_issuer, nonce) }
    : undefined;
  const { credentialResponse } = await client.retrieveCredentials({
    issuerMetadata,
    accessToken,
    credentialConfigurationId: configurationId,
    proofs: { jwt: jwts },
    additionalRequestPayload,
  });
  const notificationId = credentialResponse.notification_id;
  if (!args['no-notification']) {
    await client.sendNotification({
      issuerMetadata,
      accessToken,
      notification: { notificationId, event: 'credential_accepted' },
    });
  }
  const configuration =
    issuerMetadata.credentialIssuer.credential_configurations_supported[configurationId];
  for (const [i, c] of credentialResponse.credentials.entries()) {
    await check(configuration.format, configuration, c.credential, keys[i].publicJwk);
  }
  console.log(JSON.stringify({
    configuration_id: configurationId,
    format: configuration.format,
    credential: credentialResponse.credentials[0].credential,
    jwk: publicJwk,
    credentials: credentialResponse.credentials.map((c) => c.credential),
    jwks: keys.map((k) => k.publicJwk),
    notification_id: notificationId,
  }));
}

main().catch((e) => {
  // The library's errors carry the issuer's answer.
  const response = e.response ?? e.errorResponse ?? null;
  console.log(JSON.stringify({
    error: e.message,
    status: response?.status ?? null,
    body: e.errorResponse ?? e.credentialErrorResponseResult?.data ?? null,
  }));
  process.exit(1);
});
