// The dashboard's two HTTP calls to the registry that serves it (docs/protocol.md §9), on the
// logged-in session cookie: registering this browser's node, and reading the owner's ledger
// balances and the node's work.

/** Registers (or finds again) the node of this public key; resolves to its id. */
export async function nodeRegister({ url, csrfToken, publicKey, subnet, env }) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken },
    body: JSON.stringify({ public_key: publicKey, subnets: [subnet], env }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`registration refused (${response.status}): ${body.detail || body.code || "?"}`);
  return body.id;
}

/** {balances, node} from the status endpoint (node null before registration), or null when
 * the registry did not answer 200. */
export async function statusFetch({ url, nodeId }) {
  const query = nodeId ? `?node=${encodeURIComponent(nodeId)}` : "";
  const response = await fetch(url + query, { credentials: "same-origin", headers: { Accept: "application/json" } });
  return response.ok ? response.json() : null;
}
