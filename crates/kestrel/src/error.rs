//! The library's error type. Every variant names what was wrong (file, tensor, field, parameter) so the
//! binary can print it as is and exit non-zero; nothing in the library panics on user input.

use std::path::PathBuf;

pub type Result<T, E = KestrelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum KestrelError {
    // The cause is part of the message and deliberately not a `#[source]`: anyhow's `{:#}` prints the
    // source chain after the message, which printed the OS error twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A model or data file whose bytes are not what its format promises (truncated, bad magic, bad offsets).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("unsupported tensor type {ty} for tensor '{tensor}'{hint}")]
    UnsupportedTensorType {
        tensor: String,
        ty: String,
        hint: String,
    },
    #[error("unsupported architecture '{0}': Kestrel runs qwen3 and qwen2 models")]
    UnsupportedArchitecture(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("tensor '{name}' not found in {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("tensor '{name}': expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context} (prompt + max tokens must fit; use a shorter prompt or a larger --ctx-size)")]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },
    #[error("invalid parameter {name}: {msg}")]
    InvalidParameter { name: String, msg: String },
    #[error("download: {0}")]
    Download(String),
    #[error("backend: {0}")]
    Backend(String),
    /// The engine's own bookkeeping broke a promise (a bug, reported instead of a panic).
    #[error("engine: {0}")]
    Engine(String),
}

impl KestrelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KestrelError::Io {
            path: path.into(),
            cause: source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        KestrelError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn param(name: impl Into<String>, msg: impl Into<String>) -> Self {
        KestrelError::InvalidParameter {
            name: name.into(),
            msg: msg.into(),
        }
    }
}
