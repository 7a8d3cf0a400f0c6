//! Host side of the segment flash attention (kernels/attention.cu): packs an `AttnPlan` into one
//! i32 array (groups, key ranges, work items, positions) uploaded per call, checks it against the
//! buffers, and launches the forward or the two backward kernels.

use super::{launch, CudaBackend, CudaBuf};
use crate::backend::{AttnArgs, AttnDims, AttnPlan, AttnSaved, MaskKind};
use anyhow::Result;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, LaunchConfig};

/// Must match NW, KT and MAXC in kernels/attention.cu.
const NW: usize = 8;
const KT: usize = 32;
pub const MAX_HEAD_DIM: usize = 256;

/// Dynamic shared memory (bytes) of each kernel for a head dim; mirrors the kernels' carving.
fn smem_fwd(hd: usize) -> usize {
    4 * (KT * (hd | 1) + KT * hd + NW * hd)
}
fn smem_dq(hd: usize) -> usize {
    4 * (2 * KT * (hd | 1) + 2 * NW * hd)
}
fn smem_dkv(hd: usize) -> usize {
    4 * (2 * KT * (hd | 1) + 2 * NW * hd + 2 * KT)
}

/// Raises the attention kernels' dynamic shared memory limit (above the 48 KiB default) as far
/// as head_dim 256 needs or the device allows; returns the limit launches are checked against.
pub(super) fn configure(ctx: &CudaContext, k: &super::kernels::Kernels) -> Result<usize> {
    let optin = CudaBackend::attribute(
        ctx,
        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
    )? as usize;
    let want = smem_fwd(MAX_HEAD_DIM)
        .max(smem_dq(MAX_HEAD_DIM))
        .max(smem_dkv(MAX_HEAD_DIM));
    let limit = want.min(optin);
    for f in [&k.attention_fwd, &k.attention_bwd_dq, &k.attention_bwd_dkv] {
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            limit as i32,
        )
        .map_err(|e| anyhow::anyhow!("attention shared-memory limit: {e:?}"))?;
    }
    Ok(limit)
}

/// The attention plan flattened into one i32 array for the kernels, and where each part starts.
struct PlanArrays {
    ints: Vec<i32>,
    ranges_off: i32,
    items_off: i32,
    n_items: usize,
    dkv_off: i32,
    n_dkv: usize,
    qpos_off: i32,
    kpos_off: i32,
    /// Every query row belongs to a group (else the uncovered rows get zeros first).
    covers_all: bool,
}

fn plan_arrays(plan: &AttnPlan, rows: usize, k_rows: usize, with_dkv: bool) -> PlanArrays {
    let g = &plan.groups;
    let mut covered = vec![false; rows];
    let mut ranges: Vec<i32> = vec![];
    let mut ints: Vec<i32> = Vec::with_capacity(5 * g.len());
    for gr in g {
        assert!(
            gr.q.end <= rows && gr.q.end <= plan.q_pos.len(),
            "cuda attention: group rows"
        );
        for r in gr.q.clone() {
            assert!(!covered[r], "cuda attention: query row {r} in two groups");
            covered[r] = true;
        }
        let mask = match gr.mask {
            MaskKind::Causal => 0,
            MaskKind::Full => 1,
            MaskKind::AntiCausal => 2,
        };
        let r_off = ranges.len() / 2;
        for kr in &gr.kv {
            assert!(
                kr.end <= k_rows && kr.end <= plan.k_pos.len(),
                "cuda attention: key rows"
            );
            ranges.extend([kr.start as i32, kr.end as i32]);
        }
        ints.extend([gr.q.start, gr.q.end, mask, r_off, gr.kv.len()].map(|v| v as i32));
    }
    let ranges_off = ints.len() as i32;
    ints.extend(ranges);
    let items_off = ints.len() as i32;
    for (gi, gr) in g.iter().enumerate() {
        for q0 in gr.q.clone().step_by(NW) {
            ints.extend([gi as i32, q0 as i32]);
        }
    }
    let n_items = (ints.len() - items_off as usize) / 2;
    let dkv_off = ints.len() as i32;
    if with_dkv {
        for (gi, gr) in g.iter().enumerate().filter(|(_, gr)| !gr.q.is_empty()) {
            for kr in &gr.kv {
                for k0 in kr.clone().step_by(NW) {
                    ints.extend([gi as i32, k0 as i32, (k0 + NW).min(kr.end) as i32]);
                }
            }
        }
    }
    let n_dkv = (ints.len() - dkv_off as usize) / 3;
    let qpos_off = ints.len() as i32;
    ints.extend(plan.q_pos.iter().map(|&p| p as i32));
    let kpos_off = ints.len() as i32;
    ints.extend(plan.k_pos.iter().map(|&p| p as i32));
    PlanArrays {
        ints,
        ranges_off,
        items_off,
        n_items,
        dkv_off,
        n_dkv,
        qpos_off,
        kpos_off,
        covers_all: covered.iter().all(|&c| c),
    }
}

/// Checks dims and buffer sizes; returns (query rows, key rows).
fn attn_check(
    be: &CudaBackend,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    d: AttnDims,
) -> (usize, usize) {
    let (hq, hkv, hd) = (d.q_heads, d.kv_heads, d.head_dim);
    assert!(
        hd > 0 && hd <= MAX_HEAD_DIM,
        "cuda attention: head_dim {hd} (max 256)"
    );
    assert!(
        hkv > 0 && hq % hkv == 0,
        "cuda attention: q heads not a multiple of kv heads"
    );
    let need = smem_fwd(hd).max(smem_dq(hd)).max(smem_dkv(hd));
    assert!(
        need <= be.attn_smem_limit,
        "cuda attention: head_dim {hd} needs {need} B of shared memory, device allows {}",
        be.attn_smem_limit
    );
    assert!(k.len() == v.len(), "cuda attention: K and V sizes differ");
    (q.len() / (hq * hd), k.len() / (hkv * hd))
}

fn cfg(items: usize, heads: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items as u32, heads as u32, 1),
        block_dim: ((NW * 32) as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

pub(super) fn attention_fwd(
    be: &CudaBackend,
    out: &mut CudaBuf,
    lse: &mut CudaBuf,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    a: AttnArgs,
) {
    let (plan, d) = (a.plan, a.dims);
    let (rows, k_rows) = attn_check(be, q, k, v, d);
    assert!(
        out.len() >= q.len() && lse.len() >= rows * d.q_heads,
        "cuda attention_fwd: outputs"
    );
    let p = plan_arrays(plan, rows, k_rows, false);
    if !p.covers_all {
        // Rows outside every group: zeros and lse = −∞, as on the CPU.
        super::ops::fill(be, out, 0.0);
        super::ops::fill(be, lse, f32::NEG_INFINITY);
    }
    if p.n_items == 0 {
        return;
    }
    // The same plan for every layer of a pass: uploaded once.
    let plan_d = be.up_i32.get(be, &p.ints);
    let hd = d.head_dim;
    launch!(be, attention_fwd, cfg(p.n_items, d.q_heads, smem_fwd(hd));
        &mut *out.data, &mut *lse.data, &*q.data, &*k.data, &*v.data, &*plan_d,
        &p.ranges_off, &p.items_off, &p.qpos_off, &p.kpos_off,
        &(d.q_heads as i32), &(d.kv_heads as i32), &(hd as i32), &d.scale);
}

pub(super) fn attention_bwd(
    be: &CudaBackend,
    dq: &mut CudaBuf,
    dk: &mut CudaBuf,
    dv: &mut CudaBuf,
    dout: &CudaBuf,
    fwd: AttnSaved<CudaBuf>,
    a: AttnArgs,
) {
    let AttnSaved { q, k, v, out, lse } = fwd;
    let (plan, d) = (a.plan, a.dims);
    let (rows, k_rows) = attn_check(be, q, k, v, d);
    assert!(
        dq.len() >= q.len() && dout.len() >= q.len() && out.len() >= q.len(),
        "cuda attention_bwd: sizes"
    );
    assert!(
        dk.len() >= k.len() && dv.len() >= v.len() && lse.len() >= rows * d.q_heads,
        "cuda attention_bwd: sizes"
    );
    let p = plan_arrays(plan, rows, k_rows, true);
    if !p.covers_all {
        super::ops::fill(be, dq, 0.0); // dq is overwritten: rows in no group get zeros
    }
    if p.n_items == 0 {
        return;
    }
    // The same plan for every layer of a pass: uploaded once.
    let plan_d = be.up_i32.get(be, &p.ints);
    let mut dsum = be.alloc_zeros(rows * d.q_heads);
    let (hq, hkv, hd) = (d.q_heads as i32, d.kv_heads as i32, d.head_dim as i32);
    launch!(be, attention_bwd_dq, cfg(p.n_items, d.q_heads, smem_dq(d.head_dim));
        &mut *dq.data, &mut *dsum.data, &*dout.data, &*q.data, &*k.data, &*v.data, &*out.data,
        &*lse.data, &*plan_d, &p.ranges_off, &p.items_off, &p.qpos_off, &p.kpos_off,
        &hq, &hkv, &hd, &d.scale);
    if p.n_dkv == 0 {
        return;
    }
    launch!(be, attention_bwd_dkv, cfg(p.n_dkv, d.q_heads, smem_dkv(d.head_dim));
        &mut *dk.data, &mut *dv.data, &*dout.data, &*q.data, &*k.data, &*v.data, &*lse.data,
        &*dsum.data, &*plan_d, &p.dkv_off, &p.qpos_off, &p.kpos_off, &hq, &hkv, &hd, &d.scale);
}
