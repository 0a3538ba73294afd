#!/usr/bin/env bash
# Makes NVRTC 13.0 and the CUDA headers available on a machine without a CUDA toolkit, so the test suite
# can compile every kernel for sm_80 and sm_90 (crates/kestrel-cuda/tests/nvrtc_compile.rs).
#   libnvrtc.so.13  from the PyPI wheel nvidia-cuda-nvrtc   (nvidia/cu13/lib)
#   cuda_bf16.h ... from the PyPI wheel nvidia-cuda-runtime (nvidia/cu13/include)
# 13.0 matches the GPU machines' driver and toolkit. The wheels go into Kestrel's cache once
# ($KESTREL_CACHE, default ~/.cache/kestrel); nothing is downloaded when they are already there.
# Prints shell `export` lines on stdout (progress goes to stderr), for:
#   eval "$(bash scripts/ci-nvrtc.sh)"
set -euo pipefail
nvrtc_version=13.0.88
runtime_version=13.0.96
cache=${KESTREL_CACHE:-$HOME/.cache/kestrel}
dir=$cache/nvrtc-$nvrtc_version-runtime-$runtime_version
cu13=$dir/nvidia/cu13
if [ ! -f "$cu13/include/cuda_bf16.h" ] || ! ls "$cu13"/lib/libnvrtc.so.13* >/dev/null 2>&1; then
  echo "ci-nvrtc: installing nvidia-cuda-nvrtc==$nvrtc_version nvidia-cuda-runtime==$runtime_version into $dir" >&2
  rm -rf "$dir.tmp"
  pip install --quiet --disable-pip-version-check --no-deps --target "$dir.tmp" \
    "nvidia-cuda-nvrtc==$nvrtc_version" "nvidia-cuda-runtime==$runtime_version" >&2
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
fi
[ -f "$cu13/include/cuda_bf16.h" ] || { echo "ci-nvrtc: no cuda_bf16.h under $cu13/include" >&2; exit 1; }
ls "$cu13"/lib/libnvrtc.so.13* >/dev/null 2>&1 || { echo "ci-nvrtc: no libnvrtc.so.13 under $cu13/lib" >&2; exit 1; }
printf 'export LD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n' "$cu13/lib"
printf 'export KESTREL_CUDA_INCLUDE=%q\n' "$cu13/include"
