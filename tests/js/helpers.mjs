// Shared by the tests in tests/js/: the Python ground truth, the browser modules' paths,
// and Ed25519 keys from the fixture's seeds.
import { readFileSync } from "node:fs";

export const ROOT = new URL("../../", import.meta.url);
export const js = (name) => new URL(`contributor/static/js/${name}`, ROOT).href;
export const fixture = JSON.parse(readFileSync(new URL("fixtures/protocol.json", import.meta.url), "utf8"));

const utf8 = new TextEncoder();
export const bytes = (text) => utf8.encode(text);
export const hex = (data) => Buffer.from(data).toString("hex");

// WebCrypto imports no raw Ed25519 private key: the 32-byte seed goes inside PKCS#8
// (docs/protocol.md, appendix).
const PKCS8_ED25519_PREFIX = "302e020100300506032b657004220420";

export function keyFromSeed(seedHex) {
  const der = Buffer.from(PKCS8_ED25519_PREFIX + seedHex, "hex");
  return crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
}

export function verify(publicKeyB64, signatureB64, message) {
  return crypto.subtle.importKey("raw", Buffer.from(publicKeyB64, "base64"), { name: "Ed25519" }, false, ["verify"])
    .then((key) => crypto.subtle.verify({ name: "Ed25519" }, key, Buffer.from(signatureB64, "base64"), message));
}
