//! The kernels compiled by build.rs, embedded as fatbins and resolved **eagerly**: `Kernels::load`
//! looks up every entry point the backend launches, so a kernel that is missing or fails to load
//! on this GPU is an error at `CudaBackend::new`, not at its first use mid-training.

use anyhow::{anyhow, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

fn module(ctx: &Arc<CudaContext>, name: &str) -> Result<Arc<CudaModule>> {
    let (_, image) = MODULES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| anyhow!("kernels/{name}.cu was not compiled into this build"))?;
    // A fatbin holds sm_80 and sm_90 machine code and compute_90 PTX; the driver picks the
    // cubin for this GPU or JIT-compiles the PTX (newer architectures).
    ctx.load_module(Ptx::from_binary(image.to_vec()))
        .map_err(|e| anyhow!("loading kernels/{name}.cu on this GPU: {e:?}"))
}

/// One field per entry point; `module: [names]` lists each .cu file's kernels.
macro_rules! kernels {
    ($($module:literal : [$($name:ident),* $(,)?]),* $(,)?) => {
        pub struct Kernels {
            $($(pub $name: CudaFunction,)*)*
        }
        impl Kernels {
            pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
                $(
                    let m = module(ctx, $module)?;
                    $(
                        let $name = m
                            .load_function(stringify!($name))
                            .map_err(|e| anyhow!("{e:?}"))
                            .with_context(|| {
                                format!("kernel {} in kernels/{}.cu", stringify!($name), $module)
                            })?;
                    )*
                )*
                Ok(Self { $($($name,)*)* })
            }
        }
    };
}

kernels! {
    "rows": [fill, add, scale, add_bias_rows, copy_rows, gather_rows, scatter_add_rows,
             embedding_fwd, argmax],
    "kv_mix": [kv_mix_fwd, kv_mix_bwd, kv_mix_fwd_theta, kv_mix_bwd_theta, kv_mix_bwd_theta_grad],
    "cols": [mul_cols, add_cols, col_dot, dora_inv_norm],
    "act": [act_fwd, act_bwd],
    "norm": [norm_fwd, norm_bwd],
    "rope": [rope],
    "cross_entropy": [cross_entropy],
    "optim": [adamw, sgd, sum_sq],
    "gemv": [matmul_fwd_gemv],
    "seg_gemm": [seg_gemm],
    "attention": [attention_fwd, attention_bwd_dq, attention_bwd_dkv],
}
