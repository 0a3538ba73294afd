#!/usr/bin/env bash
# gpu-decode-check.sh: one device call that checks and times the CUDA backend at full size:
# every bundled kestrel_cuda test, the parity check (0.6B and 4B, checkpoints kept), then
# `kestrel bench` at both shapes in each of $VARIANTS (default: pdl nopdl nofuse eager: PDL on,
# KESTREL_PDL=0, KESTREL_FUSE_NORM=0, --eager; nofuseqk = KESTREL_FUSE_QK=0; attnlanes = KESTREL_ATTN_MMA=0 (the lane decode attention); attnmma3 = 3; sampled[-eager] =
# tg at temperature 0.7 on the GPU sampler; none), and with NCU=1 the per-kernel GPU time of a few
# eager decode steps (ncu, caches and clocks left alone) into ncu-<shape>.csv.
# Env: SKIP_TESTS=1, SKIP_PARITY=1 (then only makes the checkpoints), PARITY_SHAPES, BENCH_SHAPES,
#      GEMV_BENCH=1 (the decode GEMV microbenchmark), NCU_PROMPT (prompt length of the ncu run), NCU_ARGS
#      (more bench arguments for it, e.g. "--batch 128": batched decode steps as the engine runs them),
#      THROUGHPUT=1 (bench --throughput, --sweep and --batch 64 at THROUGHPUT_SHAPES, once per THROUGHPUT_VARIANTS:
#      default, or words joined by +: attnlanes = KESTREL_ATTN_MMA=0, attnmma3 = 3 (3-stage rings), attnh3 = h3 (K and V tiles apart in 3 slots),
#      attn2 / attnh3tma / attnh4 / attnh4tma = KESTREL_ATTN_MMA=2 (two stages everywhere) / h3tma / h4 / h4tma (bulk copies: tma),
#      smallN = KESTREL_ATTN_SMALL_CTAS=N (the largest grid on the 3-slot bulk-copy ring), nosplitmixed = KESTREL_SPLIT_MIXED=0,
#      unsorted = KESTREL_DECODE_LONGEST_FIRST=0 (decode steps' sequences in schedule order, not longest context first),
#      prefillscalar = KESTREL_PREFILL_MMA=0 (the f32 prefill attention, not the tensor-core one; also a VARIANTS word),
#      sync = KESTREL_ASYNC_DECODE=0 (no asynchronous scheduling: each decode step read back before the next),
#      fusewave / nofuseqk = KESTREL_FUSE_QK=wave / 0 (q/k norm + RoPE fused into one-wave decode grids only / none),
#      a number = KESTREL_ATTN_TARGET_CTAS (e.g. attnmma3+2048); budgetN = bench.py's --max-num-batched-tokens N;
#      THROUGHPUT_TEMPERATURE=0.6 adds nano-vllm's sampled variant; THROUGHPUT_ONLY=1 skips the sweep and
#      batch-64 runs) into throughput.txt,
#      QUANT_QUALITY=1 (the quantized-model quality test at BENCH_SHAPES, types KESTREL_QUANT_TYPES; the
#      CPU comparisons at 0.6b only) into quant-quality-<shape>.txt,
#      SANITIZE=1 (compute-sanitizer memcheck + racecheck (SANITIZE_TOOLS) on short 0.6B generations:
#      graphs and eager, greedy and GPU-sampled; memcheck also the engine with chunked prefill) into
#      sanitize.txt.
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
    # a warm machine keeps /tmp between calls
    [ -f "/tmp/kestrel-parity/$shape/model.safetensors" ] && continue
    python3 scripts/make_full_size_reference.py --shape "$shape" --out "/tmp/kestrel-parity/$shape" \
      --device cuda --tokenizer .gpu/qwen3-tokenizer --attn sdpa > "$out/make-$shape.log" 2>&1
  done
  echo "checkpoints made ($((SECONDS - start)) s)" >> "$out/summary.txt"
fi
for shape in ${BENCH_SHAPES:-0.6b 4b}; do
  m=/tmp/kestrel-parity/$shape
  for variant in ${VARIANTS:-pdl nopdl nofuse eager}; do
    case $variant in
      none) continue ;;
      pdl) env=(); extra=() ;;
      nopdl) env=(KESTREL_PDL=0); extra=() ;;
      nofuse) env=(KESTREL_FUSE_NORM=0); extra=() ;;
      nofuseqk) env=(KESTREL_FUSE_QK=0); extra=() ;;
      sampled) env=(); extra=(--temperature 0.7) ;;
      sampled-eager) env=(); extra=(--temperature 0.7 --eager) ;;
      attnlanes) env=(KESTREL_ATTN_MMA=0); extra=() ;;
      prefillscalar) env=(KESTREL_PREFILL_MMA=0); extra=() ;;
      attnmma3) env=(KESTREL_ATTN_MMA=3); extra=() ;;
      attnh3) env=(KESTREL_ATTN_MMA=h3); extra=() ;;
      ctas512) env=(KESTREL_ATTN_TARGET_CTAS=512); extra=() ;;
      ctas4096) env=(KESTREL_ATTN_TARGET_CTAS=4096); extra=() ;;
      eager) env=(); extra=(--eager) ;;
      q8_0|q4_0|q4_k_m) env=(); extra=(--quant "$variant") ;;
    esac
    echo "== $shape $variant" >> "$out/bench.txt"
    env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda -p 512 -n 128 -r 3 "${extra[@]}" \
      >> "$out/bench.txt" 2>&1
  done
done
echo "bench done ($((SECONDS - start)) s)" >> "$out/summary.txt"
if [ "${QUANT_QUALITY:-0}" = 1 ]; then
  # issue 4: BF16 vs its quantized versions at full size; GPU vs CPU on the same quantized model
  for shape in ${BENCH_SHAPES:-0.6b 4b}; do
    cpu=0; [ "$shape" = 0.6b ] && cpu=1
    KESTREL_PARITY_DIR=/tmp/kestrel-parity/$shape KESTREL_QUANT_CPU=$cpu \
      $(ls .gpu/tests/kestrel_cuda_gpu_quant_quality-* | head -n 1) --nocapture > "$out/quant-quality-$shape.txt" 2>&1
    echo "quant quality $shape rc=$? ($((SECONDS - start)) s)" >> "$out/summary.txt"
  done
fi
if [ "${THROUGHPUT:-0}" = 1 ]; then
  # issue 5: the engine on nano-vllm's bench.py workload and the concurrency sweep; batched decode
  for shape in ${THROUGHPUT_SHAPES:-0.6b 4b}; do
    m=/tmp/kestrel-parity/$shape
    for variant in ${THROUGHPUT_VARIANTS:-default}; do
      # a variant is words joined by +, each adding to the environment: attnlanes, attnmma3,
      # attnh3, nosplitmixed, unsorted, prefillscalar, sync, or a number (decode-attention target CTAs);
      # or to bench.py's arguments: budgetN = --max-num-batched-tokens N; default = none
      env=(); args=()
      IFS=+ read -r -a words <<< "$variant"
      for word in "${words[@]}"; do
        case $word in
          default) ;;
          attnlanes) env+=(KESTREL_ATTN_MMA=0) ;;
          attnmma3) env+=(KESTREL_ATTN_MMA=3) ;;
          attnh3) env+=(KESTREL_ATTN_MMA=h3) ;;
          attnh3tma|attnh4|attnh4tma|attn2) env+=(KESTREL_ATTN_MMA=${word#attn}) ;;
          small*) env+=(KESTREL_ATTN_SMALL_CTAS=${word#small}) ;;
          nosplitmixed) env+=(KESTREL_SPLIT_MIXED=0) ;;
          unsorted) env+=(KESTREL_DECODE_LONGEST_FIRST=0) ;;
          prefillscalar) env+=(KESTREL_PREFILL_MMA=0) ;;
          sync) env+=(KESTREL_ASYNC_DECODE=0) ;;
          fusewave) env+=(KESTREL_FUSE_QK=wave) ;;
          nofuseqk) env+=(KESTREL_FUSE_QK=0) ;;
          budget*) args+=(--max-num-batched-tokens "${word#budget}") ;;
          *) env+=(KESTREL_ATTN_TARGET_CTAS=$word) ;;
        esac
      done
      {
        echo "== $shape throughput (variant: $variant)"
        env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda --throughput "${args[@]}" 2>&1
        if [ "${THROUGHPUT_ONLY:-0}" != 1 ]; then
          echo "== $shape sweep ($variant)"
          env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda --sweep 2>&1
          echo "== $shape batch 64 ($variant)"
          env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda --batch 64 -p 512 -n 128 -r 1 2>&1
        fi
        if [ -n "${THROUGHPUT_TEMPERATURE:-}" ]; then
          echo "== $shape throughput at temperature $THROUGHPUT_TEMPERATURE ($variant)"
          env "${env[@]}" .gpu/bin/kestrel bench -m "$m" --device cuda --throughput --temperature "$THROUGHPUT_TEMPERATURE" 2>&1
        fi
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
      .gpu/bin/kestrel bench -m "/tmp/kestrel-parity/$shape" --device cuda -p ${NCU_PROMPT:-512} -n 4 -r 1 --eager ${NCU_ARGS:-} \
      > "$out/ncu/ncu-$shape.csv" 2> "$out/ncu/ncu-$shape.err"
    python3 scripts/ncu_sum.py "$out/ncu/ncu-$shape.csv" > "$out/ncu-$shape-summary.txt" 2>&1
  done
  tar czf "$out/ncu.tgz" -C "$out" ncu && rm -rf "$out/ncu"
  echo "ncu done ($((SECONDS - start)) s)" >> "$out/summary.txt"
fi
if [ "${SANITIZE:-0}" = 1 ]; then
  # Each run is bounded by SANITIZE_TIMEOUT seconds (racecheck at full size is slow); rc=124 = timed out.
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  m=/tmp/kestrel-parity/0.6b
  prompt="The quick brown fox jumps over the lazy dog near the river bank"
  sanitize_n=0
  sanitize() { # tool label command...
    local tool=$1 label=$2 t0=$SECONDS; shift 2
    echo "== $tool $label" >> "$out/sanitize.txt"
    # Full reports go to sanitize-<n>.log; racecheck hazards are counted per kernel: cuBLAS's own nvjet
    # (prefill GEMM) kernels synchronise through TMA barriers that racecheck does not model and always
    # report hazards (excluding them with --kernel-name-exclude crashes the run), so ours are counted apart.
    local log="$out/sanitize-$((++sanitize_n)).log"
    timeout "${SANITIZE_TIMEOUT:-150}" "$cs" --tool "$tool" --print-limit 100000 "$@" > "$log" 2>&1
    local rc=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^error" "$log" >> "$out/sanitize.txt"
    grep -oE "(Race reported between|Invalid|Error:).* at [A-Za-z_0-9]+" "$log" | sed -E 's/.* at //' | sort | uniq -c \
      | sed 's/^/  hazards in /' >> "$out/sanitize.txt"
    local ours
    ours=$(grep -E "Race reported|Invalid __|Error:" "$log" | grep -vc nvjet)
    echo "rc=$rc, errors outside cuBLAS: $ours ($((SECONDS - t0)) s)" >> "$out/sanitize.txt"
  }
  run=(.gpu/bin/kestrel run -m "$m" --device cuda -c 256 --gpu-memory-utilization 0.3 --raw)
  engine=(.gpu/bin/kestrel bench -m "$m" --device cuda --throughput --num-seqs 6 --min-input-len 20 --max-input-len 150
          --min-output-len 3 --max-output-len 6 --max-num-batched-tokens 64 --max-num-seqs 6 --kv-tokens 1024 --temperature 0.7)
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    sanitize "$tool" "greedy, graphs" "${run[@]}" --temperature 0 -n 4 "$prompt"
    sanitize "$tool" "GPU sampling, eager" "${run[@]}" --eager --temperature 0.8 --top-k 40 --top-p 0.9 --min-p 0.02 -n 4 "$prompt"
    # racecheck of the engine runs is not possible here: with graphs or eager, the sanitized process
    # grows past the machine's 128 GB of host memory and the OOM killer ends it (dmesg, H100 machine,
    # session 4; `kestrel run` above takes the same kernels and is checked)
    [ "$tool" = racecheck ] && continue
    sanitize "$tool" "engine: 6 requests, chunked prefill, mixed steps" "${engine[@]}"
    sanitize "$tool" "engine, eager" "${engine[@]}" --eager
  done
  grep -c "^rc=0, errors outside cuBLAS: 0 " "$out/sanitize.txt" | sed 's/^/sanitize runs clean: /' >> "$out/summary.txt"
  grep "^rc=" "$out/sanitize.txt" | grep -v "^rc=0, errors outside cuBLAS: 0 " >> "$out/summary.txt"
  echo "sanitize done ($((SECONDS - start)) s)" >> "$out/summary.txt"
fi
if [ -d "$out/parity" ]; then tar czf "$out/parity.tgz" -C "$out" parity && rm -rf "$out/parity"; fi
