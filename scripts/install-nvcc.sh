#!/usr/bin/env bash
# Installs CUDA's compiler (nvcc, ptxas, CCCL headers) into .cuda/ from PyPI, with no GPU and no
# system CUDA, so `cargo build --features cuda` can compile kernels/*.cu anywhere (CI included).
# Pinned exactly: cuda-toolkit 13.0.3.0 pins nvcc 13.0.88; a newer nvcc emits PTX that a 13.0
# driver (the GPU machines') rejects. Idempotent: a second run only checks and prints the path.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=13.0.3.0

nvcc_path() { ls .cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1; }

installed() {
    [ -x .cuda/bin/pip ] && [ -n "$(nvcc_path)" ] &&
        .cuda/bin/pip show cuda-toolkit 2>/dev/null | grep -qx "Version: $VERSION"
}

# nvcc preprocesses every .cu with the host C++ compiler, even when it only emits device code.
if ! command -v g++ >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if ! installed; then
    [ -x .cuda/bin/pip ] || python3 -m venv .cuda
    .cuda/bin/pip install --quiet --disable-pip-version-check "cuda-toolkit[nvcc,cccl]==$VERSION"
fi
nvcc="$(nvcc_path)"
echo "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*'))"
