//! Which backend a job runs on (`--device` on the command line). Every job is written once,
//! generic over the backend; [`on_device!`](crate::on_device) opens the chosen one and
//! monomorphises the body. A device failure is raised and caught here, below the jobs and the
//! CLI, because the CUDA backend raises it (see `docs/ARCHITECTURE.md`, "Devices and device
//! state").

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("unknown device {s:?} (expected cpu, cuda or cuda:N)");
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            d => match d.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Device::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Opens GPU `ordinal` (or the simulator with `BITUNE_CUDA_SIM=1`); the error says why not.
#[cfg(feature = "cuda")]
pub fn open_cuda(ordinal: usize) -> Result<crate::backend::cuda::CudaBackend> {
    crate::backend::cuda::CudaBackend::new(ordinal)
        .map_err(|e| anyhow::anyhow!("--device cuda:{ordinal}: {e:#}"))
}

/// Without the `cuda` feature there is no CUDA backend to open: say how to get one.
#[cfg(not(feature = "cuda"))]
pub fn open_cuda(ordinal: usize) -> Result<crate::backend::cpu::Cpu> {
    bail!(
        "--device cuda:{ordinal}: this binary was built without CUDA \
         (rebuild with `cargo build --release --features cuda`)"
    )
}

/// A failure the CUDA backend cannot return through the infallible `Backend` methods (out of
/// device memory, a failed launch or copy): raised as a panic with this payload, turned back
/// into an error at the command's edge by [`catch_device_failure`], so the user sees one line
/// naming the op and sizes and the process exits non-zero, never a panic backtrace.
#[derive(Debug, Clone)]
pub struct DeviceFailure(pub String);

impl fmt::Display for DeviceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Raises a [`DeviceFailure`] (see there why a panic).
pub fn device_failure(msg: String) -> ! {
    std::panic::panic_any(DeviceFailure(msg))
}

/// Runs `f`, turning a [`DeviceFailure`] raised inside it into an error; other panics (bugs)
/// propagate unchanged. The default panic hook is silenced for device failures only, once.
pub fn catch_device_failure<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<DeviceFailure>().is_none() {
                prev(info)
            }
        }));
    });
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => match p.downcast::<DeviceFailure>() {
            Ok(d) => bail!("{}", d.0),
            Err(p) => std::panic::resume_unwind(p),
        },
    }
}

/// `on_device!(device, |be| body)`: opens the backend `device` names, binds it to `be` and
/// evaluates `body` (a `Result`) with it, once per backend type. Device failures inside the body
/// come back as errors ([`catch_device_failure`]).
#[macro_export]
macro_rules! on_device {
    ($dev:expr, |$be:ident| $body:expr) => {{
        match $dev {
            $crate::backend::device::Device::Cpu => {
                let $be = $crate::backend::cpu::Cpu;
                $body
            }
            $crate::backend::device::Device::Cuda(ordinal) => {
                let $be = $crate::backend::device::open_cuda(ordinal)?;
                $crate::backend::device::catch_device_failure(|| $body)
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("gpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }
}
