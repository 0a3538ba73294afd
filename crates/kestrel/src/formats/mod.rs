//! Model file formats: GGUF (read and write), safetensors (HF directories), HF hub download, and the
//! mapping between HF and GGUF tensor names. Every format hands out [`HostTensor`]s that borrow from a
//! memory map, so nothing is copied or dequantized at load.

pub mod gguf;
pub mod gguf_export;
pub mod gguf_write;
pub mod host_tensor;

pub use host_tensor::{HostTensor, TensorBytes};
pub mod hub;
pub mod names;
pub mod quantizing;
pub mod safetensors;
pub mod source;
