#!/usr/bin/env bash
# gpu-run-tests.sh [TEST...]: on the GPU machine, unpacks a bundle whose binaries were gzipped to fit the
# 64 MiB a call carries (`gzip .gpu/bin/kestrel .gpu/tests/* .gpu/qwen3-tokenizer/tokenizer.json` after
# gpu-bundle), then runs the named bundled tests (kestrel_cuda_<TEST>-*, e.g. gpu_quant gpu_dp4a) one
# thread each, logs into $OUT/<TEST>.log and a line each into $OUT/summary.txt. No TEST: unpack only.
# SAVE_KCACHE=1: after the tests, the kernel cache goes to $OUT as kcache.tgz.00, .01, ... (15 MiB parts: $OUT
# brings back files of 16 MiB at most); copy them into .gpu/ for the next calls (a fresh machine otherwise spends
# ~165 s compiling the kernels of one 0.6B run, and a machine idle for 30 s is given back).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
for f in .gpu/bin/*.gz .gpu/tests/*.gz .gpu/qwen3-tokenizer/*.gz; do
  [ -e "$f" ] && gunzip -f "$f"
done
chmod +x .gpu/bin/* .gpu/tests/* 2>/dev/null
# A carried NVRTC cache (`tar czf kcache.tgz kernels` of ~/.cache/kestrel on an earlier GPU machine, copied
# to .gpu/): entries are keyed by kernel source, headers, arch and options, so stale ones are never used,
# and a fresh machine skips the ~3 minutes of compiling every kernel it still holds.
cache_dir=${KESTREL_CACHE:-$HOME/.cache/kestrel}
if ls .gpu/kcache.tgz.[0-9]* > /dev/null 2>&1; then
  mkdir -p "$cache_dir" && cat .gpu/kcache.tgz.[0-9]* | tar xz -C "$cache_dir"
elif [ -f .gpu/kcache.tgz ]; then
  mkdir -p "$cache_dir" && tar xzf .gpu/kcache.tgz -C "$cache_dir"
fi
out=${OUT:-/tmp/gpu-tests}; mkdir -p "$out"
export KESTREL_REQUIRE_GPU=1 RUST_BACKTRACE=1
start=$SECONDS
nvidia-smi --query-gpu=name --format=csv,noheader >> "$out/summary.txt"
for t in "$@"; do
  exe=$(ls .gpu/tests/kestrel_cuda_"$t"-* 2>/dev/null | head -n 1)
  if [ -z "$exe" ]; then echo "$t: not in the bundle" >> "$out/summary.txt"; continue; fi
  timeout "${TEST_TIMEOUT:-240}" "$exe" --nocapture --test-threads 1 > "$out/$t.log" 2>&1
  echo "$t rc=$? ($((SECONDS - start)) s)" >> "$out/summary.txt"
  grep -E "^test result|FAILED|panicked" "$out/$t.log" | head -5 >> "$out/summary.txt"
done
if [ "${SAVE_KCACHE:-0}" = 1 ]; then
  tar czf - -C "$cache_dir" kernels | split -b 15m -d - "$out/kcache.tgz."
fi
