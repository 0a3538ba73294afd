//! A request's generated text, released piece by piece: [`TokenStream`] keeps an unfinished UTF-8
//! character back until its last byte arrives, and [`StopMatcher`] keeps back text that may still
//! become a stop string. The same two stages, in the same order, as the single-sequence
//! [`super::generate::generate`], so both give the same text.

use super::stop::{StopMatcher, StopStep};
use crate::tokenizer::{TokenStream, Tokenizer};
use crate::Result;

pub struct TextDelta {
    tokenizer: Tokenizer,
    stream: TokenStream,
    stops: StopMatcher,
}

/// Text a token released.
pub enum Delta {
    Text(String),
    /// A stop string completed: this text comes before it, and generation ends.
    Stopped(String),
}

impl TextDelta {
    /// Special tokens are left out of the text, as `generate` does.
    pub fn new(tokenizer: &Tokenizer, stop: Vec<String>) -> TextDelta {
        TextDelta {
            tokenizer: tokenizer.clone(),
            stream: tokenizer.stream(true),
            stops: StopMatcher::new(stop),
        }
    }

    /// The text a generated token releases (possibly empty). An id past the tokenizer's vocabulary
    /// (models pad their embedding table) has no text: it adds nothing rather than failing the
    /// request.
    pub fn push(&mut self, id: u32) -> Result<Delta> {
        if !self.tokenizer.knows(id) {
            return Ok(Delta::Text(String::new()));
        }
        Ok(match self.stream.push(id)? {
            None => Delta::Text(String::new()),
            Some(text) => match self.stops.push(&text) {
                StopStep::Emit(t) => Delta::Text(t),
                StopStep::Stopped(t) => Delta::Stopped(t),
            },
        })
    }

    /// Generation ended (not at a stop string): everything held back, where a stop string may yet
    /// complete in the flushed bytes.
    pub fn finish(&mut self) -> Delta {
        let rest = self.stream.flush().unwrap_or_default();
        match self.stops.push(&rest) {
            StopStep::Emit(t) => Delta::Text(t + &self.stops.finish()),
            StopStep::Stopped(t) => Delta::Stopped(t),
        }
    }
}
