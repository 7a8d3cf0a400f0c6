#!/usr/bin/env bash
# Installs llama-cpp-python (llama.cpp's Python bindings), pinned, into .pyref/ — the llama.cpp
# peer of bench/run_cpu.sh (bench/llama_cpp_bench.py). Built from source, as pip builds this
# package, for the CPU it runs on (GGML_NATIVE), so the comparison is with llama.cpp at its best
# on this machine. Needs .pyref (scripts/setup-python.sh) and a C/C++ compiler; pip fetches
# cmake/ninja into the build environment. Takes minutes on 2 cores; skipped when the pinned
# version is already importable. JOBS=n sets the build's parallelism (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
py=.pyref/bin/python
[ -x "$py" ] || { echo "no .pyref: run scripts/setup-python.sh first" >&2; exit 1; }
if have=$($py -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null) && [ "$have" = "$version" ]; then
    echo "llama-cpp-python $version already installed"
    exit 0
fi
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-2}"
echo "building llama-cpp-python $version from source (CMAKE_ARGS=$CMAKE_ARGS, -j$CMAKE_BUILD_PARALLEL_LEVEL)..."
$py -m pip install --no-binary llama-cpp-python "llama-cpp-python==$version"
echo "llama-cpp-python ready: $($py -c 'import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())')"
