#!/usr/bin/env bash
# The browser contributor's front-end: pinned npm packages (package.json + package-lock.json)
# copied into contributor/static/vendor/ (served by the registry itself, no CDN at run time),
# and Debian's chromium for the browser tests (never a downloaded browser build).
# Called by the Makefile's venv rule; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v npm >/dev/null || { echo "install_frontend: npm is missing (Debian package: npm)" >&2; exit 1; }
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

vendor=contributor/static/vendor
ort=node_modules/onnxruntime-web
tok=node_modules/@huggingface/tokenizers
wllama=node_modules/@wllama/wllama
rm -rf "$vendor"
mkdir -p "$vendor/ort" "$vendor/tokenizers" "$vendor/wllama/single-thread" "$vendor/wllama/multi-thread"
# onnxruntime-web: the WASM-only build (plain SIMD+threads binary) and the WebGPU build
# (JSEP/asyncify binary, which also runs WASM); each loads its .mjs glue and .wasm from
# env.wasm.wasmPaths = /static/vendor/ort/.
for f in ort.wasm.min.mjs ort.webgpu.min.mjs \
         ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm \
         ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm; do
  cp "$ort/dist/$f" "$vendor/ort/$f"
done
cp "$ort/LICENSE" "$vendor/ort/LICENSE" 2>/dev/null || cp node_modules/onnxruntime-common/LICENSE "$vendor/ort/LICENSE" 2>/dev/null || true
cp "$tok/dist/tokenizers.min.mjs" "$vendor/tokenizers/tokenizers.min.mjs"
cp "$tok/LICENSE" "$vendor/tokenizers/LICENSE"
# wllama (llama.cpp in WebAssembly) for text subnets: its ES module, which starts its own
# worker from a blob: URL, and the single- and multi-thread binaries it picks between.
cp "$wllama/esm/index.js" "$vendor/wllama/index.js"
cp "$wllama/esm/single-thread/wllama.wasm" "$vendor/wllama/single-thread/wllama.wasm"
cp "$wllama/esm/multi-thread/wllama.wasm" "$vendor/wllama/multi-thread/wllama.wasm"
cp "$wllama/LICENCE" "$vendor/wllama/LICENCE"
node -e '
const fs = require("fs");
const v = (p) => JSON.parse(fs.readFileSync(p + "/package.json")).version;
fs.writeFileSync(process.argv[1] + "/versions.json",
  JSON.stringify({"onnxruntime-web": v(process.argv[2]), "@huggingface/tokenizers": v(process.argv[3]), "@wllama/wllama": v(process.argv[4])}) + "\n");
' "$vendor" "$ort" "$tok" "$wllama"
echo "install_frontend: copied onnxruntime-web, @huggingface/tokenizers and @wllama/wllama into $vendor ($(du -sh "$vendor" | cut -f1))"

if [ ! -x /usr/bin/chromium ]; then
  echo "install_frontend: /usr/bin/chromium is missing; installing the Debian package chromium"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || { echo "install_frontend: apt-get install chromium failed; the browser tests need /usr/bin/chromium" >&2; exit 1; }
  else
    echo "install_frontend: cannot install chromium here (need root and apt-get); the browser tests need /usr/bin/chromium" >&2
    exit 1
  fi
fi
