//! Decode steps launched before the previous step's tokens are read back (asynchronous scheduling,
//! as vLLM's): the engine plans step N+1 while step N runs, so the device does not wait for the host
//! between steps. Step N+1's input tokens are then step N's outputs, named by row
//! ([`DecodeInput::Previous`]) instead of by value; a backend that keeps them on the device feeds
//! them from there, one that computed them at launch (the default, the CPU) reads them from the
//! [`PendingDecode`] it returned.

use crate::{KestrelError, Result};

/// Where one row's input token of a launched decode step comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeInput {
    /// A token the host knows.
    Token(u32),
    /// Row `r` of the tokens of the decode step launched just before this one.
    Previous(usize),
}

/// A launched decode step whose tokens are not read back yet.
#[derive(Debug)]
pub struct PendingDecode {
    /// The tokens, where the backend computed them at launch.
    ready: Option<Vec<u32>>,
    /// Else the backend's own name for the step (its tokens are on the device).
    handle: Option<u64>,
}

impl PendingDecode {
    /// A step whose tokens were computed at launch.
    pub fn ready(tokens: Vec<u32>) -> PendingDecode {
        PendingDecode {
            ready: Some(tokens),
            handle: None,
        }
    }

    /// A step still running, known to its backend as `handle`.
    pub fn on_device(handle: u64) -> PendingDecode {
        PendingDecode {
            ready: None,
            handle: Some(handle),
        }
    }

    pub fn handle(&self) -> Option<u64> {
        self.handle
    }

    pub fn tokens(&self) -> Option<&[u32]> {
        self.ready.as_deref()
    }

    pub fn into_tokens(self) -> Result<Vec<u32>> {
        self.ready.ok_or_else(|| {
            KestrelError::Backend("a launched decode step has no tokens to read back".into())
        })
    }
}

/// The input tokens by value, for a backend that computed `previous`'s tokens at launch.
pub fn resolve_inputs(
    inputs: &[DecodeInput],
    previous: Option<&PendingDecode>,
) -> Result<Vec<u32>> {
    inputs
        .iter()
        .map(|i| match *i {
            DecodeInput::Token(t) => Ok(t),
            DecodeInput::Previous(r) => previous
                .and_then(PendingDecode::tokens)
                .and_then(|t| t.get(r).copied())
                .ok_or_else(|| {
                    KestrelError::Backend(format!(
                        "a decode input names row {r} of a previous step that has no such token"
                    ))
                }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_resolve_from_the_previous_step() {
        let prev = PendingDecode::ready(vec![7, 8, 9]);
        let inputs = [
            DecodeInput::Previous(2),
            DecodeInput::Token(4),
            DecodeInput::Previous(0),
        ];
        assert_eq!(resolve_inputs(&inputs, Some(&prev)).unwrap(), vec![9, 4, 7]);
        assert!(resolve_inputs(&[DecodeInput::Previous(3)], Some(&prev)).is_err());
        assert!(resolve_inputs(&[DecodeInput::Previous(0)], None).is_err());
        assert_eq!(prev.into_tokens().unwrap(), vec![7, 8, 9]);
    }
}
