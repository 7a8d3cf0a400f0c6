#!/usr/bin/env bash
# Mutation check of the CUDA tests on the simulator (docs/ARCHITECTURE.md, "CUDA without a
# GPU"): for each kernel family, break one line of its kernel (a mask off by one, a missing
# barrier, a wrong stride, a wrong sign, ...), rebuild, and run the test that should catch it.
# Every mutation must make its test fail; the kernel file is restored after each one (also on
# interruption). Prints one line per mutation and exits non-zero if any mutation survived.
# About 40 s per mutation on 2 cores (the rebuild recompiles the kernels). Not part of CI.
# Usage: scripts/mutation-check.sh [NAME_FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
filter="${1:-}"

# name | file | test binary | test name | occurrence | old line fragment | replacement
mutations=$(cat <<'EOF'
attention_fwd mask off by one|kernels/attention.cu|cuda_attention_lora|attention_fwd_bwd|1|visible(mask, qp, k_pos[j])|visible(mask, qp + 1, k_pos[j])
attention_fwd softmax not rescaled|kernels/attention.cu|cuda_attention_lora|attention_fwd_bwd|1|l = l * corr + warp_sum(p);|l = l + warp_sum(p);
attention_bwd_dq missing barrier|kernels/attention.cu|cuda_attention_lora|attention_fwd_bwd|1|load_rows(Vs, ks, v, t0, nk, kw, kh * hd, hd);\n            __syncthreads();|load_rows(Vs, ks, v, t0, nk, kw, kh * hd, hd);
attention_bwd_dq mask off by one|kernels/attention.cu|cuda_attention_lora|attention_fwd_bwd|2|visible(mask, qp, k_pos[j])|visible(mask, qp, k_pos[j] + 1)
attention_bwd_dkv wrong head stride|kernels/attention.cu|cuda_attention_lora|attention_fwd_bwd|1|atomicAdd(&dv[j * kw + kh * hd + d], gv[c]);|atomicAdd(&dv[j * kw + h * hd + d], gv[c]);
attention_bwd_dkv missing barrier|kernels/attention.cu|cuda_attention_lora|attention_fwd_bwd|1|            Ds[threadIdx.x] = dsum[(size_t)(i0 + threadIdx.x) * hq + h];\n        }\n        __syncthreads();|            Ds[threadIdx.x] = dsum[(size_t)(i0 + threadIdx.x) * hq + h];\n        }
seg_gemm (lora) missing barrier|kernels/seg_gemm.cu|cuda_attention_lora|lora_fwd_bwd|1|        __syncthreads();\n    }|    }
seg_gemm (lora) wrong A stride|kernels/seg_gemm.cu|cuda_attention_lora|lora_fwd_bwd|1|A[gm * a_rs + gk * a_cs]|A[gm * a_rs + gk]
kv_mix_bwd sign of dtheta|kernels/kv_mix.cu|cuda_ops|kv_mix_fwd_bwd|1|(buf[b + i] - buf[c + i]) * g|(buf[c + i] - buf[b + i]) * g
kv_mix_fwd weights swapped|kernels/kv_mix.cu|cuda_ops|kv_mix_fwd_bwd|1|(1.0f - alpha) * buf[c + i] + alpha * buf[b + i]|alpha * buf[c + i] + (1.0f - alpha) * buf[b + i]
norm_fwd LayerNorm mean|kernels/norm.cu|cuda_ops|norm_fwd_bwd|1|mean = block_sum_d(s, scratch) / d;|mean = block_sum_d(s, scratch) / (d - 1);
norm_bwd projection term|kernels/norm.cu|cuda_ops|norm_fwd_bwd|1|m2 = block_sum_d(m2, scratch) / d;|m2 = block_sum_d(m2, scratch);
rope position off by one|kernels/rope.cu|cuda_ops|rope_partial_and_inverse|1|(float)pos[row] * inv_freq[i]|(float)(pos[row] + 1) * inv_freq[i]
cross_entropy missing barrier|kernels/cross_entropy.cu|cuda_ops|cross_entropy_fused|1|const float lt = lr[t];  // every thread reads it before any thread overwrites the row\n        __syncthreads();|const float lt = lr[t];
cross_entropy gradient target|kernels/cross_entropy.cu|cuda_ops|cross_entropy_fused|1|(j == (int)t ? 1.0 : 0.0)|(j == (int)t + 1 ? 1.0 : 0.0)
adamw second moment|kernels/optim.cu|cuda_ops|adamw_sgd_sum_sq|1|(1.0f - beta2) * gi * gi|(1.0f - beta2) * gi
sum_sq square dropped|kernels/optim.cu|cuda_ops|adamw_sgd_sum_sq|1|        s += v * v;|        s += v;
gather_rows wrong stride|kernels/rows.cu|cuda_ops|row_ops|1|out[e] = src[(size_t)idx[i] * width + c];|out[e] = src[(size_t)idx[i] * (width - 1) + c];
embedding_fwd scale dropped|kernels/rows.cu|cuda_ops|row_ops|1|out[e] = table[(size_t)ids[i] * dim + c] * scale;|out[e] = table[(size_t)ids[i] * dim + c];
copy_rows accumulate inverted|kernels/rows.cu|cuda_ops|row_ops|1|if (accumulate) dst[dst_off + i] += v; else dst[dst_off + i] = v;|if (!accumulate) dst[dst_off + i] += v; else dst[dst_off + i] = v;
act_bwd silu gradient|kernels/act.cu|cuda_ops|act_fwd_bwd|1|return s * (1.0f + x * (1.0f - s));|return s * (1.0f + x * (1.0f + s));
gemv lane stride|kernels/gemv.cu|cuda_attention_lora|matmul_fwd_and_matmul_bwd_x_on_every_path|1|for (int i = lane; i < k / 4; i += 32)|for (int i = lane; i < k / 4; i += 31)
kv_mix_fwd_theta α without abs|kernels/kv_mix.cu|cuda_ops|kv_mix_fwd_bwd_theta|1|    const float a = fabsf(theta);|    const float a = theta;
kv_mix_bwd_theta_grad sign|kernels/kv_mix.cu|cuda_ops|kv_mix_fwd_bwd_theta|1|const float da = s * theta_init / (d * d);|const float da = -s * theta_init / (d * d);
col_dot row stride|kernels/cols.cu|cuda_ops|mul_cols_add_cols_col_dot_dora_inv_norm|1|const size_t at = start + r * width + j;|const size_t at = start + r * (width - 1) + j;
dora_inv_norm scale dropped|kernels/cols.cu|cuda_ops|mul_cols_add_cols_col_dot_dora_inv_norm|1|(b[(size_t)j * rank + r] * scale)|b[(size_t)j * rank + r]
argmax missing barrier in the reduction|kernels/rows.cu|cuda_ops|argmax_first_maximum|1|        }\n        __syncthreads();\n    }\n    if (threadIdx.x == 0) out[0]|        }\n    }\n    if (threadIdx.x == 0) out[0]
mma B fragment rows|kernels/mma.cuh|cuda_sim_mma|mma_fragments_from_registers|1|const unsigned row = 2 * t + (i & 1) + 8 * (i >> 1), col = g;|const unsigned row = 2 * t + (i >> 1) + 8 * (i & 1), col = g;
mma D fragment rows|kernels/mma.cuh|cuda_sim_mma|mma_fragments_from_ldmatrix|1|o.d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];|o.d[i] = D[g + 8 * (i & 1)][2 * t + (i >> 1)];
ldmatrix trans ignored|kernels/mma.cuh|cuda_sim_mma|ldmatrix_every_form|1|const uint32_t lo = Trans ? M[m][2 * t][g] : M[m][g][2 * t];|const uint32_t lo = M[m][g][2 * t];
cp.async wait lands one group too few|kernels/mma.cuh|cuda_sim_mma|cp_async_groups_land_in_order|1|while (s.groups.size() > n) {|while (s.groups.size() > n + 1) {
EOF
)

restore() { [ -n "${saved:-}" ] && cp "$saved" "$file" && rm -f "$saved"; saved=""; }
trap restore EXIT INT TERM

survived=0
while IFS='|' read -r name file bin test occ old new; do
    [ -z "$name" ] && continue
    [[ -n "$filter" && "$name" != *"$filter"* ]] && continue
    saved="$(mktemp)"
    cp "$file" "$saved"
    python3 - "$file" "$occ" "$old" "$new" <<'PY'
import sys
path, occ, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
old, new = old.replace("\\n", "\n"), new.replace("\\n", "\n")
s = open(path).read()
at = -1
for _ in range(occ):
    at = s.find(old, at + 1)
    if at < 0:
        sys.exit(f"mutation does not apply: occurrence {occ} of {old!r} not in {path}")
open(path, "w").write(s[:at] + new + s[at + len(old):])
PY
    log="$(mktemp)"
    # As CI runs the tests: in order first, then blocks and threads shuffled on two OS threads.
    caught=""
    for mode in "in order" "shuffled"; do
        vars=(BITUNE_CUDA_SIM=1 BITUNE_CUDA_SIM_QUIET=1)
        [ "$mode" = shuffled ] && vars+=(BITUNE_CUDA_SIM_THREADS=2 BITUNE_CUDA_SIM_SEED=7)
        if ! env "${vars[@]}" cargo test -q --features cuda --test "$bin" -- --exact "$test" >"$log" 2>&1; then
            # A mutant that does not compile proves nothing about the test.
            grep -q "panicked at" "$log" && caught="$mode" || caught="build"
            break
        fi
    done
    if [ "$caught" = build ]; then
        echo "NO BUILD  $name ($file): the mutant did not compile; pick another"
        survived=$((survived + 1))
    elif [ -z "$caught" ]; then
        echo "SURVIVED  $name ($file, $bin::$test)"
        survived=$((survived + 1))
    else
        why=$(grep -m1 -E "panicked at|^error" -A1 "$log" | tail -1 | cut -c1-160)
        echo "caught    $name ($bin::$test, $caught): $why"
    fi
    rm -f "$log"
    restore
done <<<"$mutations"
# Rebuild the unmutated kernels so the tree's build matches its sources again.
cargo build -q --features cuda --tests >/dev/null 2>&1 || true
[ "$survived" -eq 0 ] && echo "every mutation was caught" || { echo "$survived mutation(s) survived"; exit 1; }
