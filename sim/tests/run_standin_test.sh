#!/usr/bin/env bash
# Builds the libcuda / libcublas stand-ins on the simulator runtime and runs the smoke test
# (sim/tests/standin_test.cpp). Output in $OUT (default /tmp/bitune-standin-test); nothing is
# written in the repository. Usage: sim/tests/run_standin_test.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sim="$(dirname "$here")"
out="${OUT:-/tmp/bitune-standin-test}"
mkdir -p "$out"
cxx="${CXX:-g++}"
flags=(-std=c++17 -O2 -fPIC -Wall -Wextra -Werror -g)
# Everything of libcuda: the runtime and the driver stand-in (every sim/*.cpp but cublas*).
runtime=()
for f in "$sim"/*.cpp; do [[ "$(basename "$f")" == cublas* ]] || runtime+=("$f"); done
set -x
$cxx "${flags[@]}" -shared -Wl,-soname,libcuda.so -o "$out/libcuda.so" \
    "${runtime[@]}" -lpthread
$cxx "${flags[@]}" -shared -Wl,-soname,libcublas.so -o "$out/libcublas.so" "$sim/cublas.cpp" \
    -L"$out" -l:libcuda.so -Wl,-rpath,"$out"
$cxx "${flags[@]}" -o "$out/standin_test" "$here/standin_test.cpp" \
    -L"$out" -l:libcuda.so -l:libcublas.so -Wl,-rpath,"$out" -Wl,--no-as-needed -ldl -lpthread
"$out/standin_test"
