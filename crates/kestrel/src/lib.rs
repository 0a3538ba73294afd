//! Kestrel: Qwen3 / Qwen2 inference.
//!
//! Everything but CUDA and HTTP lives here: file formats (GGUF, safetensors, the HF hub), ggml block
//! quantization, the tokenizer and chat template, the model written once against the [`backend::Backend`]
//! trait, the CPU reference backend, and the sampling / generation engine.

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod formats;
pub mod model;
pub mod parity;
pub mod quant;
pub mod tokenizer;

pub use error::{KestrelError, Result};
