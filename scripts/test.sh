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
# CUDA without a GPU (docs/ARCHITECTURE.md, "CUDA without a GPU"): install nvcc 13.0 from PyPI
# (cached in .cuda/), compile every kernel for the GPU and again for the simulator, and run every
# CUDA test on the simulator. BITUNE_CUDA_REQUIRED=1 makes a CUDA test that cannot open a device
# fail rather than skip. The tests run twice: blocks in order (the default, deterministic), then
# on two OS threads in a shuffled order, which must give the same results up to the order of
# float atomics. The other tests do not change with the feature; rebuilding them cost minutes.
scripts/install-nvcc.sh
cuda_tests=(--test cuda_sim --test cuda_sim_mma --test cuda_ops --test cuda_attention_lora --test cuda_model --test cuda_transfers --test cuda_cli)
BITUNE_CUDA_SIM=1 BITUNE_CUDA_REQUIRED=1 cargo test --features cuda "${cuda_tests[@]}" 2>&1
BITUNE_CUDA_SIM=1 BITUNE_CUDA_REQUIRED=1 BITUNE_CUDA_SIM_THREADS=2 BITUNE_CUDA_SIM_SEED=7 BITUNE_CUDA_SIM_QUIET=1 \
    cargo test --features cuda "${cuda_tests[@]}" 2>&1
# The driver and cuBLAS stand-ins against their own checks (copies, limits, every GEMM layout,
# capture and graphs), as a C++ program.
OUT="$PWD/target/standin-test" sim/tests/run_standin_test.sh 2>&1 | grep -v '^+ '
# ptxas's per-kernel registers / shared memory / spills, into the log.
sed -n '1,/^Raw ptxas/p' target/ptxas-report.txt
