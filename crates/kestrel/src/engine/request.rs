//! A request as the engine sees it: its prompt, its sampler, its text stream and the rules that end
//! it; and the outputs it reports (one [`RequestOutput`] per generated token, assembled into an
//! [`Output`] by whoever wants the whole result).

use super::generate::FinishReason;
use super::logprobs::TokenLogprob;
use super::sampling::{Sampler, SamplingParams};
use super::text_delta::{Delta, TextDelta};
use crate::tokenizer::Tokenizer;
use crate::Result;

pub type RequestId = u64;

/// A prompt: text (tokenized with special tokens parsed, so a rendered chat template works) or ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Prompt {
        Prompt::Text(s.to_string())
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Prompt {
        Prompt::Text(s)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Prompt {
        Prompt::Tokens(ids)
    }
}

impl Prompt {
    pub fn into_tokens(self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        match self {
            Prompt::Text(t) => tokenizer.encode(&t, true),
            Prompt::Tokens(ids) => Ok(ids),
        }
    }
}

/// What one step produced for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestOutput {
    pub id: RequestId,
    /// Tokens generated this step (one, or none for an abort).
    pub new_token_ids: Vec<u32>,
    /// Text released this step: whole characters only, stop strings cut off.
    pub text: String,
    /// Set on the request's last output.
    pub finish_reason: Option<FinishReason>,
    pub prompt_tokens: usize,
    /// Tokens generated so far.
    pub completion_tokens: usize,
    /// The new tokens' log-probabilities, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

/// A finished request, all its outputs put together.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub id: RequestId,
    pub token_ids: Vec<u32>,
    pub text: String,
    /// `None` only while outputs are still being added.
    pub finish_reason: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub logprobs: Vec<TokenLogprob>,
}

impl Output {
    pub fn new(id: RequestId) -> Output {
        Output {
            id,
            token_ids: Vec::new(),
            text: String::new(),
            finish_reason: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            logprobs: Vec::new(),
        }
    }

    pub fn push(&mut self, o: &RequestOutput) {
        self.token_ids.extend_from_slice(&o.new_token_ids);
        self.text.push_str(&o.text);
        self.finish_reason = o.finish_reason.or(self.finish_reason);
        self.prompt_tokens = o.prompt_tokens;
        self.completion_tokens = o.completion_tokens;
        self.logprobs.extend_from_slice(&o.logprobs);
    }
}

pub(crate) struct Request {
    pub id: RequestId,
    pub sampler: Sampler,
    delta: TextDelta,
    /// Tokens that end the request (kept in the output, left out of the text).
    stop_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `params.max_tokens`, cut to what the context leaves after the prompt.
    pub max_tokens: usize,
    pub finish_reason: Option<FinishReason>,
}

impl Request {
    pub fn new(
        id: RequestId,
        prompt: &[u32],
        params: SamplingParams,
        max_tokens: usize,
        eos_token_ids: &[u32],
        tokenizer: &Tokenizer,
    ) -> Request {
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(eos_token_ids);
        }
        Request {
            id,
            delta: TextDelta::new(tokenizer, params.stop.clone()),
            sampler: Sampler::new(params, prompt),
            stop_ids,
            prompt_tokens: prompt.len(),
            completion_tokens: 0,
            max_tokens,
            finish_reason: None,
        }
    }

    fn output(&self, new_token_ids: Vec<u32>, text: String) -> RequestOutput {
        RequestOutput {
            id: self.id,
            new_token_ids,
            text,
            finish_reason: self.finish_reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            logprobs: Vec::new(),
        }
    }

    /// Takes a generated token: its text, and the finish reason when it ends the request (a stop
    /// token, a stop string, or `max_tokens`).
    pub fn on_token(&mut self, token: u32) -> Result<RequestOutput> {
        self.completion_tokens += 1;
        let mut text = String::new();
        let mut stopped = self.stop_ids.contains(&token);
        if !stopped {
            match self.delta.push(token)? {
                Delta::Text(t) => text = t,
                Delta::Stopped(t) => {
                    self.finish_reason = Some(FinishReason::Stop);
                    return Ok(self.output(vec![token], t));
                }
            }
        }
        if !stopped && self.completion_tokens < self.max_tokens {
            return Ok(self.output(vec![token], text));
        }
        match self.delta.finish() {
            Delta::Text(t) => text += &t,
            Delta::Stopped(t) => {
                text += &t;
                stopped = true;
            }
        }
        self.finish_reason = Some(if stopped {
            FinishReason::Stop
        } else {
            FinishReason::Length
        });
        Ok(self.output(vec![token], text))
    }

    /// Ends the request with `reason` where no token did (an abort): the held-back text comes out
    /// unless a stop string ends it.
    pub fn finish_without_token(&mut self, reason: FinishReason) -> RequestOutput {
        let text = match self.delta.finish() {
            Delta::Text(t) | Delta::Stopped(t) => t,
        };
        self.finish_reason = Some(reason);
        self.output(Vec::new(), text)
    }
}
