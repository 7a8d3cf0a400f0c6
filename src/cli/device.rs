//! `--device`: the selector and the failure handling live with the backends
//! ([`crate::backend::device`]); the CLI parses the flag into them.

pub use crate::backend::device::*;
