//! File formats and file writing shared by the model, the method and the jobs. It sits below all
//! of them and imports none of them, so any layer may write a file the same crash-safe way.

pub mod atomic;
pub mod safetensors;
