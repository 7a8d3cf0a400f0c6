#!/usr/bin/env bash
# The one prepared check for a GPU machine (CUDA 13.0 driver, no Rust toolchain there): runs the
# prebuilt CUDA test binaries (every op and the whole model, CUDA vs the CPU reference), their
# kernel timings at SmolLM2 shapes, an optional compute-sanitizer pass and `bitune-rt bench`, and
# writes $OUT/results.md plus the raw log $OUT/raw.log.
#
# 1. On a build machine (this repo; nvcc comes from scripts/install-nvcc.sh, no GPU needed):
#        scripts/gpu-check.sh --prepare
#    = cargo build --release --features cuda; cargo test --release --features cuda --no-run for
#    the cuda_* tests; the stripped binaries go into .carry/bins.tar.xz (git-ignored; fixtures
#    travel with the working tree). Keep .carry small: the device tool carries at most 64 MiB.
# 2. On the GPU machine (device tool: carry [".carry"], command "scripts/gpu-check.sh"):
#        scripts/gpu-check.sh            # GPU_CHECK_SANITIZE=0 skips compute-sanitizer
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    set -e
    scripts/install-nvcc.sh
    cargo build --release --features cuda --bin bitune-rt
    tests=(--test cuda_sim --test cuda_sim_mma --test cuda_ops --test cuda_attention_lora --test cuda_model --test cuda_transfers)
    cargo test --release --features cuda --no-run "${tests[@]}"
    rm -rf .carry && mkdir -p .carry/bin
    cp target/release/bitune-rt .carry/bin/
    cargo test --release --features cuda --no-run --message-format=json "${tests[@]}" 2>/dev/null |
        python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])' |
        while read -r name exe; do cp "$exe" ".carry/bin/$name"; done
    strip .carry/bin/*
    cp target/ptxas-report.txt .carry/ 2>/dev/null || true
    git rev-parse HEAD >.carry/COMMIT 2>/dev/null || true
    tar -C .carry -cJf .carry/bins.tar.xz bin && rm -rf .carry/bin
    du -sh .carry && ls -la .carry
    exit 0
fi

OUT="${OUT:-$PWD/.carry/out}"
mkdir -p "$OUT"
RAW="$OUT/raw.log"
RES="$OUT/results.md"
: >"$RAW"
log() { echo "$@" | tee -a "$RAW"; }
run() { # run LABEL TIMEOUT CMD...: output to raw.log, returns the command's status
    local label=$1 t=$2
    shift 2
    log "=== $label: $*"
    timeout "$t" "$@" 2>&1 | tee -a "$RAW" >"$OUT/.last"
    return "${PIPESTATUS[0]}"
}

bins=$(mktemp -d)
if [ ! -f .carry/bins.tar.xz ]; then
    echo "no .carry/bins.tar.xz: run scripts/gpu-check.sh --prepare on a build machine" | tee "$RES"
    exit 2
fi
tar -C "$bins" -xJf .carry/bins.tar.xz
export BITUNE_FIXTURES="$PWD/tests/fixtures"

# cuBLAS: cudarc dlopens libcublas.so.13 (+ libcublasLt); the image has it in pip wheels rather
# than on the loader path. Without it the backend falls back to its own GEMM kernel.
cublas=$(find /usr/local/cuda*/lib64 /usr/local/lib /opt /usr/lib -name 'libcublas.so.13*' 2>/dev/null | head -n1)
[ -n "$cublas" ] && export LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
    echo "# bitune-rt GPU check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host: $(hostname)"
    echo "- binaries built from: $(cat .carry/COMMIT 2>/dev/null || echo '?')"
    echo "- GPU / driver: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -n1)"
    echo "- CUDA (driver API): $(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n1)"
    echo "- glibc: $(ldd --version 2>&1 | head -n1)"
    echo "- libcublas: ${cublas:-not found (matmuls on seg_gemm)}"
    echo
} >"$RES"
cat "$RES" >>"$RAW"
nvidia-smi >>"$RAW" 2>&1

echo "| binary | test | result |" >>"$RES"
echo "|---|---|---|" >>"$RES"
status=0
skipped=0
for t in cuda_sim cuda_sim_mma cuda_ops cuda_attention_lora cuda_model cuda_transfers; do
    run "$t" 300 "$bins/bin/$t" --test-threads=1 --nocapture
    rc=$?
    [ $rc -ne 0 ] && status=1
    grep -E '^test .* \.\.\. ' "$OUT/.last" | sed -E 's/^test (.*) \.\.\. (.*)$/| '"$t"' | \1 | \2 |/' >>"$RES"
    grep -q "SKIP: no CUDA device" "$OUT/.last" && skipped=1
    [ $rc -ne 0 ] && echo "| $t | (binary) | exit $rc (see raw.log) |" >>"$RES"
done
# The whole model again with matmuls on the segment-GEMM kernel instead of cuBLAS.
run "cuda_model without cuBLAS" 300 env BITUNE_NO_CUBLAS=1 "$bins/bin/cuda_model" --test-threads=1
rc=$?
[ $rc -ne 0 ] && status=1
echo "| cuda_model (BITUNE_NO_CUBLAS=1) | all | $([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)") |" >>"$RES"

{
    echo
    echo "## Kernel timings (SmolLM2-135M shapes, one layer, Bitune batch 8 × (100 + 60) tokens)"
    echo
} >>"$RES"
run timings 300 "$bins/bin/cuda_attention_lora" --ignored --nocapture timings_smollm2_shapes
grep '^TIMING' "$OUT/.last" | sed 's/^TIMING /- /' >>"$RES"

if [ "${GPU_CHECK_SANITIZE:-1}" = 1 ] && command -v compute-sanitizer >/dev/null; then
    echo -e "\n## compute-sanitizer (memcheck)\n" >>"$RES"
    for bt in cuda_ops:row_ops cuda_ops:norm_fwd_bwd cuda_ops:cross_entropy_fused \
        cuda_attention_lora:lora_fwd_bwd cuda_attention_lora:attention_fwd_bwd; do
        run "memcheck $bt" 180 compute-sanitizer --tool memcheck --error-exitcode 3 \
            "$bins/bin/${bt%%:*}" --exact "${bt#*:}"
        rc=$?
        echo "- ${bt#*:}: exit $rc, $(grep -m1 'ERROR SUMMARY' "$OUT/.last" || echo 'no summary (timeout?)')" >>"$RES"
    done
fi

echo -e "\n## bitune-rt bench\n" >>"$RES"
model="${BITUNE_BENCH_MODEL:-$BITUNE_FIXTURES/models/llama}"
if run bench 240 "$bins/bin/bitune-rt" bench --device cuda --model "$model" --prompt 50 --answer 200 --train; then
    echo '```' >>"$RES"
    tail -n 40 "$OUT/.last" >>"$RES"
    echo '```' >>"$RES"
else
    echo "- not available: $(tail -n1 "$OUT/.last")" >>"$RES"
fi
[ -f .carry/ptxas-report.txt ] && cp .carry/ptxas-report.txt "$OUT/"
rm -f "$OUT/.last"
rm -rf "$bins"
# A GPU check that saw no GPU proves nothing: report it as such.
[ $skipped = 1 ] && [ $status = 0 ] && status=3
echo -e "\noverall: $(case $status in 0) echo PASS ;; 3) echo 'SKIPPED (no CUDA device visible)' ;; *) echo FAIL ;; esac)" >>"$RES"
cat "$RES"
exit $status
