//! The model: Qwen3 (and Qwen2, its special case), written once against the Backend ops.

mod qwen3;

pub use qwen3::{LayerWeights, Qwen3Model};
