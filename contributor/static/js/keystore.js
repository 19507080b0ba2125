// This browser's Ed25519 keys (docs/protocol.md §2, §9): the long-term node key, made once
// per account and kept as a non-extractable WebCrypto CryptoKey in IndexedDB so the same
// browser is the same node on its next visit; and a fresh session key for every connection,
// certified by the long-term key in the hello signature.

import { b64encode, helloMessage, signB64 } from "./protocol.js";

const DB_NAME = "bim-contributor";
const KEY_STORE = "keys";
const utf8 = new TextEncoder();

export async function newEd25519Key() {
  // Non-extractable: the private half never leaves WebCrypto (IndexedDB stores the CryptoKey).
  return crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
}

/** A public key as the protocol carries it: base64 of the raw 32 bytes. */
export async function publicKeyB64(publicKey) {
  return b64encode(new Uint8Array(await crypto.subtle.exportKey("raw", publicKey)));
}

/** Whether this browser's WebCrypto can make an Ed25519 key and sign and verify with it. */
export async function ed25519Works() {
  try {
    const pair = await newEd25519Key();
    const probe = utf8.encode("probe");
    const signature = await crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, probe);
    return await crypto.subtle.verify({ name: "Ed25519" }, pair.publicKey, signature, probe);
  } catch {
    return false;
  }
}

/** A new session key for one connection, certified by the long-term key over the hello
 * string with the registry's challenge nonce: what the `hello` message carries. */
export async function sessionKeyCertified(longTermPrivateKey, nodeId, nonce) {
  const session = await newEd25519Key();
  const sessionKeyPub = await publicKeyB64(session.publicKey);
  return {
    privateKey: session.privateKey,
    sessionKeyPub,
    signature: await signB64(longTermPrivateKey, helloMessage(nodeId, nonce, sessionKeyPub)),
  };
}

function idbOpen() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(KEY_STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function idbRequest(db, mode, fn) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(KEY_STORE, mode);
    const request = fn(tx.objectStore(KEY_STORE));
    tx.oncomplete = () => resolve(request.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/** The browser's long-term node key for this account: {privateKey, publicKey, created,
 * publicKeyB64, fresh (made just now)}. */
export async function nodeKeyLoadOrCreate(username) {
  const db = await idbOpen();
  // One key per account on this browser: a key belongs to one owner in the registry.
  const name = `node-key:${username}`;
  try {
    let stored = await idbRequest(db, "readonly", (s) => s.get(name));
    if (!stored) {
      const pair = await newEd25519Key();
      stored = { privateKey: pair.privateKey, publicKey: pair.publicKey, created: new Date().toISOString() };
      await idbRequest(db, "readwrite", (s) => s.put(stored, name));
      stored.fresh = true;
    }
    return { ...stored, publicKeyB64: await publicKeyB64(stored.publicKey) };
  } finally {
    db.close();
  }
}
