//! The C API declared in `ffi/bitune.h`: `extern "C"` functions over opaque handles, so engines
//! written in C or C++ can link `libbitune_rt.a` and run Bitune without the CLI.
//!
//! Nothing that crosses the boundary is trusted:
//! - every entry point runs inside `status::guard`, which catches panics (unwinding into C is
//!   undefined behaviour) and turns every failure into a status code plus a thread-local message;
//! - handles are registry ids dressed as pointers and are never dereferenced (`handles`), so a
//!   freed, foreign or mistyped handle is an error, not a crash;
//! - pointers and lengths are checked (`args`) before any Rust slice or string is formed.
//!
//! The C boundary's `unsafe` lives only in this module: it is the price of reading C buffers, and
//! each use says why it holds.

#![deny(unsafe_op_in_unsafe_fn)]

mod args;
mod cache_api;
mod handles;
mod model_api;
mod status;

pub use cache_api::*;
pub use handles::{bitune_cache, bitune_model};
pub use model_api::*;
pub use status::bitune_status;
