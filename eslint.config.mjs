// ESLint for the browser contributor (contributor/static/) and its Node tests (tests/js/):
// `npx --no-install eslint .`, run by scripts/test_js.sh. Each file gets the globals of the
// place it runs in, and only those, so a page-only name used in a worker, or a DOM name in
// a module that tests/js/ imports under Node, is reported.
import js from "@eslint/js";
import globals from "globals";

const STATIC = "contributor/static";
// Modules that run in the page and under Node 20 alike (tests/js/ imports them).
const SHARED = [
  "protocol.js", "jobs.js", "session.js", "connection.js", "controls.js", "job-speed.js", "batching.js",
  "datachannel.js", "peer-answer.js", "peer-jobs.js", "result-store.js", "png.js", "upscale.js", "worker-rpc.js",
].map((name) => `${STATIC}/js/${name}`);
// The page's Web Worker, and a store that the page, that worker and the Service Worker import.
const WORKER = [`${STATIC}/js/engine-worker.js`, `${STATIC}/js/image-runner.js`, `${STATIC}/js/ort-session.js`, `${STATIC}/js/model-store.js`];

export default [
  // Copied from node_modules by scripts/install_frontend.sh; not ours to lint.
  { ignores: [`${STATIC}/vendor/`, "node_modules/", ".venv/", "var/"] },
  js.configs.recommended,
  {
    languageOptions: { ecmaVersion: 2024, sourceType: "module" },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      // `x == null` is the one loose comparison we mean: null or undefined.
      eqeqeq: ["error", "always", { null: "ignore" }],
      "no-shadow": "error",
      "no-throw-literal": "error",
      "no-unused-vars": ["error", { args: "all", argsIgnorePattern: "^_" }],
      "no-var": "error",
      "prefer-const": "error",
    },
  },
  { files: [`${STATIC}/js/**/*.js`], ignores: [...SHARED, ...WORKER], languageOptions: { globals: globals.browser } },
  { files: SHARED, languageOptions: { globals: globals["shared-node-browser"] } },
  { files: WORKER, languageOptions: { globals: globals.worker } },
  { files: [`${STATIC}/sw.js`], languageOptions: { globals: globals.serviceworker } },
  { files: ["tests/js/**/*.mjs", "eslint.config.mjs"], languageOptions: { globals: globals.node } },
];
