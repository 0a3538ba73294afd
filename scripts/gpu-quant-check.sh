#!/usr/bin/env bash
# gpu-quant-check.sh SHAPE...: issue 4's checks of quantized models at full size, on a GPU machine:
# for each SHAPE (0.6b, 4b): the random-weight checkpoint and HF reference (make_full_size_reference.py),
# BF16 bench; then per type in $TYPES (q8_0 q4_0 q4_k_m): `kestrel quantize` to a GGUF, HF's fp32/bf16
# runs of those quantized weights (make_quant_reference.py), the parity test of the model quantized at
# load against them (kestrel_cuda_gpu_parity, KESTREL_PARITY_QUANT), and `kestrel bench` of the GGUF.
# QUALITY=1 adds the BF16-vs-quantized report (kestrel_cuda_gpu_quant_quality; the CPU beside it at 0.6b).
# PARITY_TYPES (default: $TYPES) limits the reference + parity steps; BENCH_DP4A="t..." also benches
# those types with KESTREL_DP4A=1 (the opt-in integer-dot-product GEMVs), to measure them; BENCH_ENV="K=V ..."
# benches every quantized model a second time with those variables (e.g. KESTREL_MMA_WARPS=1024); SKIP_BENCH=1
# benches nothing (quality and parity only).
# Logs: $OUT/quant-<shape>.txt (+ summary.txt). Needs gguf-py on the GPU machine: carry its wheel in
# .gpu/whl/ (`pip download gguf --no-deps -d .gpu/whl` here); a pure-Python wheel imports from PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
for w in "$PWD"/.gpu/whl/gguf-*.whl; do
  [ -e "$w" ] && export PYTHONPATH="$w${PYTHONPATH:+:$PYTHONPATH}"
done
out=${OUT:-/tmp/quant-check}; mkdir -p "$out"
work=/tmp/kestrel-parity
export KESTREL_REQUIRE_GPU=1 RUST_BACKTRACE=1
parity=$(ls .gpu/tests/kestrel_cuda_gpu_parity-* | head -n 1)
start=$SECONDS
for shape in "$@"; do
  log=$out/quant-$shape.txt; m=$work/$shape
  if [ ! -f "$m/reference.json" ]; then
    python3 scripts/make_full_size_reference.py --shape "$shape" --out "$m" --device cuda \
      --tokenizer .gpu/qwen3-tokenizer --attn sdpa >> "$log" 2>&1
  fi
  bench() { [ "${SKIP_BENCH:-0}" = 1 ] || .gpu/bin/kestrel bench --device cuda -p 512 -n 128 -r 3 "$@"; }
  # bench_with TAG MODEL VAR=VALUE...: the bench again with those variables, named in its rows
  bench_with() {
    local tag=$1 g=$2; shift 2
    echo "== $tag $*" >> "$log"
    env "$@" .gpu/bin/kestrel bench -m "$g" --device cuda -p 512 -n 128 -r 3 2>&1 \
      | sed "s/cuda graphs)/cuda graphs, $*)/" >> "$log"
  }
  echo "== $shape bf16" >> "$log"
  bench -m "$m" >> "$log" 2>&1
  for t in ${TYPES:-q8_0 q4_0 q4_k_m}; do
    g=$work/$shape-$t.gguf
    echo "== $shape $t" >> "$log"
    .gpu/bin/kestrel quantize "$m" "$g" --type "$t" >> "$log" 2>&1
    if [[ " ${PARITY_TYPES-${TYPES:-q8_0 q4_0 q4_k_m}} " == *" $t "* ]]; then
      python3 scripts/make_quant_reference.py --base "$m" --gguf "$g" --out "$work/$shape-$t" >> "$log" 2>&1
      KESTREL_PARITY_DIR=$m KESTREL_PARITY_QUANT=$t KESTREL_PARITY_REF=$work/$shape-$t "$parity" --nocapture >> "$log" 2>&1
      echo "$shape $t parity rc=$? ($((SECONDS - start)) s)" >> "$out/summary.txt"
    fi
    bench -m "$g" >> "$log" 2>&1
    [[ " ${BENCH_DP4A:-} " == *" $t "* ]] && bench_with "$shape $t" "$g" KESTREL_DP4A=1
    [ -n "${BENCH_ENV:-}" ] && [ "${SKIP_BENCH:-0}" != 1 ] && bench_with "$shape $t" "$g" $BENCH_ENV
  done
  grep -E "tg128|pp512" "$log" | sed "s/^/$shape /" >> "$out/summary.txt"
  if [ "${QUALITY:-0}" = 1 ]; then
    cpu=0; [ "$shape" = 0.6b ] && cpu=1
    KESTREL_PARITY_DIR=$m KESTREL_QUANT_CPU=$cpu $(ls .gpu/tests/kestrel_cuda_gpu_quant_quality-* | head -n 1) \
      --nocapture >> "$out/quality-$shape.txt" 2>&1
    echo "$shape quality rc=$? ($((SECONDS - start)) s)" >> "$out/summary.txt"
  fi
done
