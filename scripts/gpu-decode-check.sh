#!/usr/bin/env bash
# gpu-decode-check.sh: one device call that checks and times the CUDA backend at full size:
# every bundled kestrel_cuda test, the parity check (0.6B and 4B, checkpoints kept), then
# `kestrel bench` at both shapes in each of $VARIANTS (default: pdl nopdl nofuse eager: PDL on,
# KESTREL_PDL=0, KESTREL_FUSE_NORM=0, --eager), and with NCU=1 the per-kernel GPU time of a few
# eager decode steps (ncu, caches and clocks left alone) into ncu-<shape>.csv.
# Env: SKIP_TESTS=1, SKIP_PARITY=1 (then only makes the checkpoints), PARITY_SHAPES, BENCH_SHAPES,
#      GEMV_BENCH=1 (the decode GEMV microbenchmark), NCU_PROMPT (prompt length of the ncu run),
#      THROUGHPUT=1 (bench --throughput, --sweep and --batch 64 at THROUGHPUT_SHAPES) into throughput.txt.
# Logs go to $OUT (default /tmp/decode-check). Run from the repo root after gpu-bundle (see gpu-parity.sh).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-/tmp/decode-check}
mkdir -p "$out"
export KEEP=1 KESTREL_REQUIRE_GPU=1
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain | grep -q . && echo '(dirty)')"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
} > "$out/summary.txt"
start=$SECONDS
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  bash .gpu/run-tests.sh > "$out/tests.log" 2>&1
  echo "tests rc=$? ($((SECONDS - start)) s)" >> "$out/summary.txt"
  grep -E "^test result|FAILED|panicked" "$out/tests.log" | sort | uniq -c >> "$out/summary.txt"
fi
if [ "${SKIP_PARITY:-0}" != 1 ]; then
  OUT=$out/parity bash scripts/gpu-parity.sh ${PARITY_SHAPES:-0.6b 4b} > "$out/parity.log" 2>&1
  echo "parity rc=$? ($((SECONDS - start)) s)" >> "$out/summary.txt"
  cat "$out/parity/summary.txt" >> "$out/summary.txt" 2>/dev/null
else
  for shape in ${BENCH_SHAPES:-0.6b 4b}; do
    python3 scripts/make_full_size_reference.py --shape "$shape" --out "/tmp/kestrel-parity/$shape" \
      --device cuda --tokenizer .gpu/qwen3-tokenizer --attn sdpa > "$out/make-$shape.log" 2>&1
  done
  echo "checkpoints made ($((SECONDS - start)) s)" >> "$out/summary.txt"
fi
for shape in ${BENCH_SHAPES:-0.6b 4b}; do
  m=/tmp/kestrel-parity/$shape
  for variant in ${VARIANTS:-pdl nopdl nofuse eager}; do
    case $variant in
      pdl) env=(); extra=() ;;
      nopdl) env=(KESTREL_PDL=0); extra=() ;;
      nofuse) env=(KESTREL_FUSE_NORM=0); extra=() ;;
      ctas512) env=(KESTREL_ATTN_TARGET_CTAS=512); extra=() ;;
      ctas4096) env=(KESTREL_ATTN_TARGET_CTAS=4096); extra=() ;;
      eager) env=(); extra=(--eager) ;;
    esac
    echo "== $shape $variant" >> "$out/bench.txt"
    env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda -p 512 -n 128 -r 3 "${extra[@]}" \
      >> "$out/bench.txt" 2>&1
  done
done
echo "bench done ($((SECONDS - start)) s)" >> "$out/summary.txt"
if [ "${THROUGHPUT:-0}" = 1 ]; then
  # issue 5: the engine on nano-vllm's bench.py workload and the concurrency sweep; batched decode
  for shape in ${THROUGHPUT_SHAPES:-0.6b 4b}; do
    m=/tmp/kestrel-parity/$shape
    for ctas in ${THROUGHPUT_CTAS:-default}; do
      env=(); [ "$ctas" = default ] || env=(KESTREL_ATTN_TARGET_CTAS=$ctas)
      {
        echo "== $shape throughput (attention target CTAs: $ctas)"
        env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda --throughput 2>&1
        echo "== $shape sweep ($ctas)"
        env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda --sweep 2>&1
        echo "== $shape batch 64 ($ctas)"
        env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda --batch 64 -p 512 -n 128 -r 1 2>&1
      } >> "$out/throughput.txt"
    done
  done
  echo "throughput done ($((SECONDS - start)) s)" >> "$out/summary.txt"
fi
if [ "${GEMV_BENCH:-0}" = 1 ]; then
  $(ls .gpu/tests/kestrel_cuda_gpu_gemv_bench-* | head -n 1) --ignored --nocapture > "$out/gemv-bench.txt" 2>&1
  echo "gemv bench done ($((SECONDS - start)) s)" >> "$out/summary.txt"
fi
if [ "${NCU:-0}" = 1 ]; then
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  mkdir -p "$out/ncu"
  for shape in ${BENCH_SHAPES:-0.6b 4b}; do
    "$ncu" --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
      .gpu/bin/kestrel bench -m "/tmp/kestrel-parity/$shape" --device cuda -p ${NCU_PROMPT:-512} -n 4 -r 1 --eager \
      > "$out/ncu/ncu-$shape.csv" 2> "$out/ncu/ncu-$shape.err"
  done
  tar czf "$out/ncu.tgz" -C "$out" ncu && rm -rf "$out/ncu"
  echo "ncu done ($((SECONDS - start)) s)" >> "$out/summary.txt"
fi
if [ -d "$out/parity" ]; then tar czf "$out/parity.tgz" -C "$out" parity && rm -rf "$out/parity"; fi
