//! Neural models used by mugflow stages, one file per model (candle), with weight loading from the
//! real checkpoint formats and key names. Each model has a parity test against the goldens of the
//! original PyTorch implementation (tests/data, with provenance).

pub mod aesthetic;
pub mod attention;
pub mod bench;
pub mod checkpoint_files;
pub mod clip;
mod conv;
pub mod device;
pub mod enhancer;
pub mod i2v;
pub mod interrupt;
mod layers;
pub mod lora;
pub mod mugdit;
pub mod mugvae;
pub mod presets;
pub mod profile;
pub mod random;
pub mod rflow;
pub mod t5;
pub mod tiny;
pub mod umt5;
pub mod wan_dit;
pub mod wan_flow;
pub mod wan_vae;
pub mod weights;
