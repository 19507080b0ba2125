// contributor/static/js/keystore.js under Node's WebCrypto: session keys and their
// certificate. (The IndexedDB half runs in the browser tests: tests/browser/.)
import assert from "node:assert/strict";
import { test } from "node:test";

import { fixture, js, keyFromSeed, verify } from "./helpers.mjs";

const keystore = await import(js("keystore.js"));
const protocol = await import(js("protocol.js"));

test("a new key is Ed25519 and its private half cannot leave WebCrypto", async () => {
  const pair = await keystore.newEd25519Key();
  assert.equal(pair.privateKey.algorithm.name, "Ed25519");
  assert.equal(pair.privateKey.extractable, false);
  await assert.rejects(crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const publicKey = await keystore.publicKeyB64(pair.publicKey);
  assert.match(publicKey, /^[A-Za-z0-9+/]{43}=$/);
  assert.equal(await keystore.ed25519Works(), true);
});

test("every session key is fresh and certified by the long-term key over the hello string", async () => {
  const longTerm = await keyFromSeed(fixture.keys.long_term_seed_hex);
  const { node_id: nodeId, nonce } = fixture.hello;
  const first = await keystore.sessionKeyCertified(longTerm, nodeId, nonce);
  const second = await keystore.sessionKeyCertified(longTerm, nodeId, nonce);
  assert.notEqual(first.sessionKeyPub, second.sessionKeyPub);
  for (const session of [first, second]) {
    const hello = protocol.helloMessage(nodeId, nonce, session.sessionKeyPub);
    assert.ok(await verify(fixture.keys.long_term_public, session.signature, hello));
    // The session key signs what the node sends next; its public half is the one certified.
    const signed = await protocol.signB64(session.privateKey, hello);
    assert.ok(await verify(session.sessionKeyPub, signed, hello));
  }
  // Another nonce, another certificate: a hello cannot be replayed on another challenge.
  assert.equal(await verify(fixture.keys.long_term_public, first.signature, protocol.helloMessage(nodeId, "AAAA", first.sessionKeyPub)), false);
});
