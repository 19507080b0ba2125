// The result store's copy in IndexedDB (./result-store.js): committed peer-to-peer results
// survive a reload of this page, so the registry's upload request, asked again after the next
// `welcome`, finds them. One object store, keyed by assignment id; writes are fire and forget
// (a failed write costs only what the in-memory store still holds).

const DB_NAME = "bim-results";
const STORE = "results";

function promisify(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      if (!request.result.objectStoreNames.contains(STORE)) request.result.createObjectStore(STORE, { keyPath: "id" });
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** A backend for ResultStore: `entries()` (every kept entry), `put(id, entry)`, `remove(id)`. */
export async function openResultDb({ onError = () => {} } = {}) {
  const db = await openDb();
  const write = (fn) => {
    try {
      const tx = db.transaction(STORE, "readwrite");
      fn(tx.objectStore(STORE));
      tx.onerror = () => onError(tx.error);
    } catch (err) {
      onError(err);
    }
  };
  return {
    entries: () => promisify(db.transaction(STORE, "readonly").objectStore(STORE).getAll()),
    put: (id, entry) => write((store) => store.put({ id, ...entry })),
    remove: (id) => write((store) => store.delete(id)),
  };
}

/** Load what an earlier page kept into `store` and write through from now on; without
 * IndexedDB the store stays in memory only (said in the log). */
export async function resultsRestore(store, log = () => {}) {
  try {
    const backend = await openResultDb({ onError: (err) => log(`could not keep a result for uploads: ${err}`, "warn") });
    const saved = await backend.entries();
    store.restore(saved);
    store.backend = backend;
    if (store.size) log(`kept ${store.size} committed result(s) from before for the registry's uploads`);
  } catch (err) {
    log(`committed results are kept in memory only (IndexedDB: ${err})`, "warn");
  }
}
