#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetches the default model once, then runs every
# test. Fixtures are committed; no Python, torch or GPU is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
# tests/ffi.rs checks ffi/bitune.h with bindgen, which loads libclang (and clang's own headers,
# hence libclang-dev rather than libclang1) at run time.
if [ -z "${LIBCLANG_PATH:-}" ] && ! ls /usr/lib/llvm*/lib/libclang.so >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
fi
cargo test --all-targets 2>&1
# CUDA without a GPU: install nvcc 13.0 from PyPI (cached in .cuda/), compile every kernel and build
# the CUDA backend, the binary and the CUDA tests with it, run those tests (they print "SKIP: no
# CUDA device" and pass here), and print ptxas's per-kernel registers / shared memory / spills into
# the log. The other tests do not change with the feature; rebuilding them cost minutes of CI.
scripts/install-nvcc.sh
cargo test --features cuda --test cuda_ops --test cuda_attention_lora --test cuda_model 2>&1
sed -n '1,/^Raw ptxas/p' target/ptxas-report.txt
