#!/usr/bin/env bash
# gpu-parity.sh [SHAPE...]: the whole full-size parity check (DESIGN.md "Numerics contract", issue 3)
# on a GPU machine, for each SHAPE (0.6b, 4b; default both; tiny works too):
#   1. scripts/make_full_size_reference.py makes a random-weight bf16 checkpoint of the real shape and
#      HF transformers' fp32 / bf16 reference logits, on the GPU, into $KESTREL_PARITY_WORK/<shape>;
#   2. the bundled test kestrel_cuda_gpu_parity runs the CUDA backend against it (kestrel::parity).
# Logs (and each reference.json) go to ${OUT:-/tmp/parity-logs}; the exit status is 0 only if every
# shape passes.
#
# Before, on the dev machine (the GPU machine has no Rust):
#   ../shared/tools/gpu-bundle --features kestrel-cli/cuda --tests kestrel_cuda
#   mkdir -p .gpu/qwen3-tokenizer && cp ~/.cache/kestrel/qwen3-tokenizer/tokenizer{,_config}.json .gpu/qwen3-tokenizer/
# Then on the GPU machine, from the repo root:  bash scripts/gpu-parity.sh 0.6b 4b
#
# Env: KESTREL_TOKENIZER_DIR  the real Qwen3 tokenizer.json + tokenizer_config.json (.gpu/qwen3-tokenizer)
#      KESTREL_PARITY_WORK    where checkpoints go (/tmp/kestrel-parity); deleted after unless KEEP=1
#      KESTREL_PARITY_ATTN    HF attention for the references: sdpa (default) or eager
#      KESTREL_PARITY_REUSE=1 reuse an existing reference of the shape (rerun only the Rust side)
#      KESTREL_PARITY_EXE     the test executable (default .gpu/tests/kestrel_cuda_gpu_parity-*)
#      KESTREL_PARITY_DEVICE  where HF runs (cuda)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
shapes=("$@"); [ ${#shapes[@]} -gt 0 ] || shapes=(0.6b 4b)
tok=${KESTREL_TOKENIZER_DIR:-.gpu/qwen3-tokenizer}
work=${KESTREL_PARITY_WORK:-/tmp/kestrel-parity}
logs=${OUT:-/tmp/parity-logs}
attn=${KESTREL_PARITY_ATTN:-sdpa}
mkdir -p "$logs" "$work"
device=${KESTREL_PARITY_DEVICE:-cuda}
exe=${KESTREL_PARITY_EXE:-$(ls .gpu/tests/kestrel_cuda_gpu_parity-* 2>/dev/null | head -n 1)}
if [ -z "$exe" ]; then
  echo "gpu-parity: no .gpu/tests/kestrel_cuda_gpu_parity-*: run ../shared/tools/gpu-bundle --features kestrel-cli/cuda --tests kestrel_cuda first" >&2
  exit 2
fi
if [ ! -f "$tok/tokenizer.json" ] || [ ! -f "$tok/tokenizer_config.json" ]; then
  echo "gpu-parity: $tok lacks tokenizer.json / tokenizer_config.json (set KESTREL_TOKENIZER_DIR)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RUST_BACKTRACE=1
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1
} | tee "$logs/environment.txt"

status=0
: > "$logs/summary.txt"
for shape in "${shapes[@]}"; do
  dir=$work/$shape
  echo "=== $shape: reference in $dir"
  if [ "${KESTREL_PARITY_REUSE:-0}" = 1 ] && [ -f "$dir/reference.json" ]; then
    echo "reusing $dir"
  else
    start=$SECONDS
    if ! python3 scripts/make_full_size_reference.py --shape "$shape" --out "$dir" --device "$device" \
        --tokenizer "$tok" --attn "$attn" 2>&1 | tee "$logs/$shape-reference.log"; then
      echo "$shape: FAIL (reference generation failed; see $shape-reference.log)" | tee -a "$logs/summary.txt"
      status=1; continue
    fi
    echo "($shape reference: $((SECONDS - start)) s)"
  fi
  cp "$dir/reference.json" "$logs/$shape-reference.json"
  cp "$dir/planted.json" "$logs/$shape-planted.json" 2>/dev/null
  echo "=== $shape: $exe"
  if KESTREL_PARITY_DIR=$dir KESTREL_REQUIRE_GPU=1 "$exe" --nocapture --test-threads=1 2>&1 | tee "$logs/$shape-parity.log"; then
    echo "$shape: PASS" | tee -a "$logs/summary.txt"
  else
    echo "$shape: FAIL (see $shape-parity.log)" | tee -a "$logs/summary.txt"
    status=1
  fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$dir"
done
echo "=== summary (logs in $logs)"
cat "$logs/summary.txt"
exit $status
