#!/usr/bin/env bash
# gpu-serve-check.sh [MODEL_DIR]: issue 6's performance line on the GPU machine, after gpu-bundle (and
# scripts/gpu-run-tests.sh to unpack): 64 concurrent streaming clients (scripts/serve_load.py: 256
# requests of 512 random prompt tokens and 64..192 output tokens, uniform: one fixed length would end
# every request in the same step and send the clients' next prompts in waves) against `kestrel serve`,
# next to `kestrel bench --throughput` on requests of the same shape with at most 64 sequences at once
# and the server's step budget (8192 tokens; the bench's own default is 16384).
# MODEL_DIR defaults to the 0.6B checkpoint gpu-decode-check.sh makes (/tmp/kestrel-parity/0.6b).
# The load runs twice (the first warms the server: graph captures per batch size); both are logged.
# Env: SERVE_ENV (e.g. "KESTREL_ATTN_MMA=0") for both the bench and the server; KESTREL_BIN and DEVICE
# (default .gpu/bin/kestrel, cuda: a CPU dry run takes target/debug/kestrel, cpu, and VOCAB=400 for the
# tiny model; prompt ids are below VOCAB, default 10000). Logs: $OUT/serve.txt.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
m=${1:-/tmp/kestrel-parity/0.6b}
out=${OUT:-/tmp/serve-check}
mkdir -p "$out"
port=${PORT:-8089}
bin=${KESTREL_BIN:-.gpu/bin/kestrel}
device=${DEVICE:-cuda}
read -r -a extra_env <<< "${SERVE_ENV:-}"
requests=(--num-seqs 256 --min-input-len 512 --max-input-len 512 --min-output-len 64 --max-output-len 192)
{
  echo "== bench --throughput: 256 requests of 512 + 64..192 tokens, at most 64 at once (${SERVE_ENV:-})"
  env "${extra_env[@]}" "$bin" bench -m "$m" --device "$device" --throughput "${requests[@]}" \
    --max-num-seqs 64 --max-num-batched-tokens 8192 2>&1
} >> "$out/serve.txt"
env "${extra_env[@]}" "$bin" serve -m "$m" --device "$device" --port "$port" --max-num-seqs 64 \
  --served-model-name m > "$out/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  grep -q "on http://" "$out/server.log" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
for round in warm-up measured; do
  echo "== serve_load.py, 64 clients ($round)" >> "$out/serve.txt"
  python3 scripts/serve_load.py "http://127.0.0.1:$port/v1" --model m --clients 64 --requests 256 \
    --prompt-len 512 --min-tokens 64 --max-tokens 192 --vocab "${VOCAB:-10000}" >> "$out/serve.txt" 2>&1
done
kill -TERM "$pid"
wait "$pid"
echo "server exit $?" >> "$out/serve.txt"
