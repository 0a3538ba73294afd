//! The engine: many requests over one model and one paged KV cache, each at its own pace
//! (nano-vllm's `LLMEngine`). Each [`Engine::step`] asks the [`Scheduler`] which sequences run and
//! how many tokens each feeds, lets the [`Runner`] run them in one forward pass, samples a token for
//! each sequence at the end of its tokens, and turns those into per-request outputs.
//!
//! Who decides what: the scheduler owns blocks, admission, chunking and preemption, and ends a
//! sequence at `max_tokens`; the engine ends it at a stop token or stop string (the scheduler's own
//! eos is not used, since requests have several stop ids) and then aborts it in the scheduler, which
//! frees its blocks. The engine is single-threaded; [`super::handle::EngineHandle`] runs it on a
//! thread of its own for concurrent clients.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::batch_sampler::{sample_step, step_rows};
use super::generate::FinishReason;
use super::loaded::LoadedModel;
use super::logprobs::{token_logprob, TokenLogprob};
use super::penalties::RowPenalties;
use super::request::{Output, Prompt, Request, RequestId, RequestOutput};
use super::row_sampling::RowSampling;
use super::runner::{Runner, StepLogits};
use super::sampling::{Sampler, SamplingParams};
use super::scheduler::{ScheduledBatch, Scheduler, SchedulerConfig, SchedulerError, SeqParams};
use super::sequence::{Sequence, PENDING_TOKEN};
use crate::backend::{Backend, DecodeInput, DecodePick, PendingDecode};
use crate::model::Qwen3Model;
use crate::tokenizer::Tokenizer;
use crate::{KestrelError, Result};

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Prompt plus generated tokens of one request at most; `None`: the model's maximum.
    pub max_model_len: Option<usize>,
}

/// Counters over the engine's life (benchmarks and tests read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub steps: u64,
    /// Tokens fed to the model (prefill chunks and decode steps).
    pub computed_tokens: u64,
    /// Sequences in the steps, summed (a step fed exactly one token to each of its sequences
    /// when these two grow alike).
    pub scheduled_seqs: u64,
    /// Tokens whose KV an admission found in the prefix cache instead of computing it.
    pub cached_tokens: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
    /// Steps through the backend's decode graph path.
    pub graph_steps: u64,
    /// Decode steps launched while the previous one was still in flight (asynchronous scheduling).
    pub pipelined_steps: u64,
    /// Wall time of `step` in nanoseconds: planning (scheduling, sampler draws) before the model
    /// runs, running it (the runner: metadata, launches, waiting for the device), and turning its
    /// tokens into outputs (sequences, text, stop checks). The first and last are host work a GPU
    /// waits through between steps.
    pub plan_ns: u64,
    pub run_ns: u64,
    pub output_ns: u64,
}

pub struct Engine<B: Backend> {
    backend: B,
    model: Qwen3Model<B>,
    tokenizer: Tokenizer,
    eos_token_ids: Vec<u32>,
    max_model_len: usize,
    scheduler: Scheduler,
    runner: Runner<B>,
    requests: HashMap<RequestId, Request>,
    /// Requests holding KV blocks (admitted and not preempted since).
    admitted: HashSet<RequestId>,
    next_id: RequestId,
    /// Outputs made between steps (aborts), returned by the next `step`.
    pending: Vec<RequestOutput>,
    /// The decode step launched and not read back yet (asynchronous scheduling).
    inflight: Option<InFlight>,
    stats: EngineStats,
}

/// A decode step launched and not read back yet.
struct InFlight {
    /// The step's sequences in row order.
    order: Vec<RequestId>,
    /// Each sequence's row, and the position of its pending token.
    rows: HashMap<RequestId, (usize, usize)>,
    /// Sequences the scheduler finished with this token (max_tokens).
    done: HashSet<RequestId>,
    pending: PendingDecode,
}

/// The samplers of the batch's sampling sequences, in batch order.
fn samplers_of<'a>(
    requests: &'a mut HashMap<RequestId, Request>,
    batch: &ScheduledBatch,
) -> Result<Vec<&'a mut Sampler>> {
    let row_of: HashMap<RequestId, usize> = batch
        .seqs
        .iter()
        .filter(|s| s.samples)
        .enumerate()
        .map(|(row, s)| (s.seq_id, row))
        .collect();
    let mut slots: Vec<Option<&mut Sampler>> = (0..row_of.len()).map(|_| None).collect();
    for (id, req) in requests.iter_mut() {
        if let Some(&row) = row_of.get(id) {
            slots[row] = Some(&mut req.sampler);
        }
    }
    slots
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| KestrelError::Engine("a scheduled sequence has no request".into()))
}

/// This step's draws and penalties, one per sampler, unless every row is plain greedy (then the
/// backend takes the argmax). Drawn once, here: the decode graph path samples inside the step.
fn draw(samplers: &mut [&mut Sampler]) -> Result<Option<StepDraws>> {
    if samplers.iter().all(|s| s.params().is_plain_greedy()) {
        Ok(None)
    } else {
        step_rows(samplers, None).map(Some)
    }
}

type StepDraws = (Vec<RowSampling>, Vec<RowPenalties>);

fn pick_of(drawn: &Option<StepDraws>) -> DecodePick<'_> {
    match drawn {
        None => DecodePick::Argmax,
        Some((rows, penalties)) => DecodePick::Sample(rows, penalties),
    }
}

fn scheduler_error(e: SchedulerError) -> KestrelError {
    match e {
        SchedulerError::Config(m) => KestrelError::param("engine config", m),
        e => KestrelError::param("request", e.to_string()),
    }
}

impl<B: Backend> Engine<B> {
    pub fn new(
        backend: B,
        model: Qwen3Model<B>,
        tokenizer: Tokenizer,
        eos_token_ids: Vec<u32>,
        cfg: EngineConfig,
    ) -> Result<Self> {
        let scheduler = Scheduler::new(cfg.scheduler).map_err(scheduler_error)?;
        let s = &cfg.scheduler;
        let runner = Runner::new(&backend, &model.config, s.block_size, s.num_blocks)?;
        let max_model_len = cfg
            .max_model_len
            .unwrap_or(model.config.max_position_embeddings);
        Ok(Engine {
            backend,
            model,
            tokenizer,
            eos_token_ids,
            max_model_len,
            scheduler,
            runner,
            requests: HashMap::new(),
            admitted: HashSet::new(),
            next_id: 0,
            pending: Vec::new(),
            inflight: None,
            stats: EngineStats::default(),
        })
    }

    pub fn from_loaded(backend: B, loaded: LoadedModel<B>, cfg: EngineConfig) -> Result<Self> {
        Self::new(
            backend,
            loaded.model,
            loaded.tokenizer,
            loaded.eos_token_ids,
            cfg,
        )
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn model(&self) -> &Qwen3Model<B> {
        &self.model
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            graph_steps: self.runner.graph_steps(),
            ..self.stats
        }
    }

    pub fn num_free_blocks(&self) -> usize {
        self.scheduler.block_manager().num_free_blocks()
    }

    pub fn num_blocks(&self) -> usize {
        self.scheduler.block_manager().num_blocks()
    }

    /// Sequences admitted (holding KV blocks), and those queued for admission.
    pub fn num_running_waiting(&self) -> (usize, usize) {
        (
            self.scheduler.running().count(),
            self.scheduler.num_waiting(),
        )
    }

    /// Requests not yet finished (or finished with outputs not yet returned by `step`).
    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty() || !self.pending.is_empty() || self.inflight.is_some()
    }

    /// Queues a request; its outputs come from later [`Self::step`]s.
    pub fn add_request(
        &mut self,
        prompt: impl Into<Prompt>,
        params: SamplingParams,
    ) -> Result<RequestId> {
        while self.requests.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        let prompt = prompt.into().into_tokens(&self.tokenizer)?;
        self.add_request_with_id(id, prompt, params)?;
        Ok(id)
    }

    /// Queues a request under an id the caller chose (the handle hands ids out before the engine
    /// thread sees the request).
    pub fn add_request_with_id(
        &mut self,
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<()> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(KestrelError::param("prompt", "is empty"));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(KestrelError::param(
                "prompt",
                format!("token id {t} is outside the model's vocabulary of {vocab}"),
            ));
        }
        if prompt.len() >= self.max_model_len {
            return Err(KestrelError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context: self.max_model_len,
            });
        }
        if self.requests.contains_key(&id) {
            return Err(KestrelError::param("request", format!("id {id} is in use")));
        }
        let max_tokens = params.max_tokens.min(self.max_model_len - prompt.len());
        let bs = self.runner.block_size();
        let seq = Sequence::new(id, prompt.clone(), bs);
        let seq_params = SeqParams {
            max_tokens,
            eos: None,
        };
        self.scheduler
            .add(seq, seq_params)
            .map_err(scheduler_error)?;
        let req = Request::new(
            id,
            &prompt,
            params,
            max_tokens,
            &self.eos_token_ids,
            &self.tokenizer,
        );
        self.requests.insert(id, req);
        Ok(())
    }

    /// Ends a request now and frees its KV blocks; its last output (finish reason `Abort`) comes
    /// with the next step. False when the id is not a live request.
    pub fn abort(&mut self, id: RequestId) -> bool {
        let Some(mut req) = self.requests.remove(&id) else {
            return false;
        };
        self.scheduler.abort(id);
        self.admitted.remove(&id);
        self.pending
            .push(req.finish_without_token(FinishReason::Abort));
        true
    }

    /// Runs one step; returns an output for every request that generated a token or finished. With
    /// asynchronous scheduling (a backend with [`Backend::async_decode`]), a pure-decode step is
    /// launched before the previous one's tokens are read back, and its outputs come with the next
    /// call: the device then never waits for this host work between decode steps.
    pub fn step(&mut self) -> Result<Vec<RequestOutput>> {
        let started = Instant::now();
        let mut outputs = std::mem::take(&mut self.pending);
        // Planned before the step in flight (if any) is read back: its sequences hold a pending
        // token, which is the input of their next decode.
        let batch = if self.scheduler.is_finished() {
            None
        } else {
            self.scheduler.schedule()
        };
        let prev = self.inflight.take();
        let Some(mut batch) = batch else {
            if let Some(prev) = prev {
                self.collect(prev, &mut outputs)?;
            } else if !self.scheduler.is_finished() {
                return Err(KestrelError::Engine(
                    "requests are waiting but none can be scheduled".into(),
                ));
            }
            return Ok(outputs);
        };
        if self.backend.decode_longest_first() && batch.seqs.iter().all(|s| s.token_ids.len() == 1)
        {
            // Rows are independent and everything downstream follows the batch's order.
            batch.seqs.sort_by_key(|s| std::cmp::Reverse(s.context_len));
        }
        self.stats.steps += 1;
        self.stats.preemptions += batch.preempted.len() as u64;
        self.stats.computed_tokens += batch.num_tokens() as u64;
        self.stats.scheduled_seqs += batch.seqs.len() as u64;
        for id in &batch.preempted {
            self.admitted.remove(id);
        }
        for s in &batch.seqs {
            // An admission's first chunk starts right after its prefix-cache hits.
            if self.admitted.insert(s.seq_id) {
                self.stats.cached_tokens += (s.context_len - s.token_ids.len()) as u64;
            }
        }
        if self.can_launch(&batch, prev.as_ref()) {
            let planned = Instant::now();
            let launched = self.launch(batch, prev.as_ref())?;
            let ran = Instant::now();
            if let Some(prev) = prev {
                self.stats.pipelined_steps += 1;
                self.collect(prev, &mut outputs)?;
            }
            self.inflight = Some(launched);
            self.add_times(started, planned, ran);
            return Ok(outputs);
        }
        if let Some(prev) = prev {
            let sampled = self.collect(prev, &mut outputs)?;
            // The step runs now: pending inputs become the tokens just read, and sequences whose
            // requests just ended (a stop token or string) leave it.
            batch.seqs.retain(|s| self.requests.contains_key(&s.seq_id));
            for s in &mut batch.seqs {
                for t in s.token_ids.iter_mut().filter(|t| **t == PENDING_TOKEN) {
                    *t = *sampled.get(&s.seq_id).ok_or_else(|| {
                        KestrelError::Engine(format!("sequence {} has no sampled token", s.seq_id))
                    })?;
                }
            }
            if batch.seqs.is_empty() {
                return Ok(outputs);
            }
        }
        self.run_now(batch, started, &mut outputs)?;
        Ok(outputs)
    }

    fn add_times(&mut self, started: Instant, planned: Instant, ran: Instant) {
        let ns = |d: std::time::Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        self.stats.plan_ns += ns(planned - started);
        self.stats.run_ns += ns(ran - planned);
        self.stats.output_ns += ns(ran.elapsed());
    }

    /// Whether `batch` can be launched without reading back the step in flight: the backend allows
    /// it, every sequence decodes one token and samples it with neither penalties nor log
    /// probabilities (which need the host's view of the tokens), and each pending input is a row of
    /// that step.
    fn can_launch(&self, batch: &ScheduledBatch, prev: Option<&InFlight>) -> bool {
        self.backend.async_decode()
            && batch.seqs.iter().all(|s| {
                s.samples
                    && s.token_ids.len() == 1
                    && self.requests.get(&s.seq_id).is_some_and(|r| {
                        let p = r.sampler.params();
                        p.logprobs.is_none() && !r.sampler.has_penalties()
                    })
                    && (s.token_ids[0] != PENDING_TOKEN
                        || prev.is_some_and(|p| p.rows.contains_key(&s.seq_id)))
            })
    }

    /// Launches a pure-decode step and applies it to the scheduler with pending tokens.
    fn launch(&mut self, batch: ScheduledBatch, prev: Option<&InFlight>) -> Result<InFlight> {
        let mut samplers = samplers_of(&mut self.requests, &batch)?;
        let drawn = draw(&mut samplers)?;
        let pick = pick_of(&drawn);
        let inputs: Vec<DecodeInput> = batch
            .seqs
            .iter()
            .map(|s| match (s.token_ids[0], prev) {
                (PENDING_TOKEN, Some(p)) => DecodeInput::Previous(p.rows[&s.seq_id].0),
                (t, _) => DecodeInput::Token(t),
            })
            .collect();
        let pending = self.runner.launch(
            &self.backend,
            &self.model,
            &batch,
            &inputs,
            prev.map(|p| &p.pending),
            pick,
        )?;
        let sampled = vec![Some(PENDING_TOKEN); batch.seqs.len()];
        let done = self.scheduler.postprocess(&batch, &sampled);
        let rows = batch
            .seqs
            .iter()
            .enumerate()
            .map(|(row, s)| (s.seq_id, (row, s.context_len)))
            .collect();
        Ok(InFlight {
            order: batch.seqs.iter().map(|s| s.seq_id).collect(),
            rows,
            done: done.into_iter().collect(),
            pending,
        })
    }

    /// Reads back a launched step: its tokens replace the pending ones and become outputs. Returns
    /// each sequence's token.
    fn collect(
        &mut self,
        prev: InFlight,
        outputs: &mut Vec<RequestOutput>,
    ) -> Result<HashMap<RequestId, u32>> {
        let ids = self.backend.collect_decode(prev.pending)?;
        if ids.len() != prev.order.len() {
            return Err(KestrelError::Backend(format!(
                "a decode step returned {} tokens for {} sequences",
                ids.len(),
                prev.order.len()
            )));
        }
        let placed: Vec<(RequestId, usize, u32)> = prev
            .order
            .iter()
            .zip(&ids)
            .map(|(&id, &tok)| (id, prev.rows[&id].1, tok))
            .collect();
        self.scheduler.set_tokens(&placed);
        let mut sampled = HashMap::with_capacity(ids.len());
        for (&id, &tok) in prev.order.iter().zip(&ids) {
            sampled.insert(id, tok);
            // An aborted request's token is dropped.
            if let Some(req) = self.requests.get_mut(&id) {
                req.sampler.accept(tok);
                let out = self.deliver(id, tok, prev.done.contains(&id), None)?;
                outputs.push(out);
            }
        }
        Ok(sampled)
    }

    /// A sampled token into its request's output; ends the request at a stop, or where the
    /// scheduler finished its sequence (`done`: max_tokens).
    fn deliver(
        &mut self,
        id: RequestId,
        tok: u32,
        done: bool,
        logprob: Option<TokenLogprob>,
    ) -> Result<RequestOutput> {
        let req = self
            .requests
            .get_mut(&id)
            .ok_or_else(|| KestrelError::Engine(format!("no request {id}")))?;
        self.stats.generated_tokens += 1;
        let mut out = req.on_token(tok)?;
        out.logprobs.extend(logprob);
        if done {
            self.scheduler.take_finished(id);
            if out.finish_reason.is_none() {
                // Both count to the same max_tokens; this only guards against drift.
                let last = req.finish_without_token(FinishReason::Length);
                out.text += &last.text;
                out.finish_reason = last.finish_reason;
            }
        } else if out.finish_reason.is_some() {
            self.scheduler.abort(id);
        }
        if out.finish_reason.is_some() {
            self.requests.remove(&id);
            self.admitted.remove(&id);
        }
        Ok(out)
    }

    /// Runs a step now and turns its tokens into outputs.
    fn run_now(
        &mut self,
        batch: ScheduledBatch,
        started: Instant,
        outputs: &mut Vec<RequestOutput>,
    ) -> Result<()> {
        let sampling: Vec<usize> = (0..batch.seqs.len())
            .filter(|&k| batch.seqs[k].samples)
            .collect();
        let mut samplers = samplers_of(&mut self.requests, &batch)?;
        let drawn = draw(&mut samplers)?;
        let pick = pick_of(&drawn);
        // Rows that report log-probabilities (row, alternatives) need their logits: no device-only
        // decode step then, and only those rows cross to the host (a GPU step may hold 256 of 152k).
        // Empty (no allocation) unless a request asked.
        let lp_rows: Vec<(usize, usize)> = samplers
            .iter()
            .enumerate()
            .filter_map(|(r, s)| Some((r, s.params().logprobs?)))
            .collect();
        let pick = lp_rows.is_empty().then_some(pick);
        let planned = Instant::now();
        let step = self.runner.run(&self.backend, &self.model, &batch, pick)?;
        let ran = Instant::now();
        let mut sampled = vec![None; batch.seqs.len()];
        // (index in the batch, the token's log-probability)
        let mut logprobs: Vec<(usize, TokenLogprob)> = Vec::new();
        if let Some(step) = step {
            let host = match (&step, lp_rows.is_empty()) {
                (StepLogits::Logits(t), false) => {
                    let rows: Vec<usize> = lp_rows.iter().map(|&(r, _)| r).collect();
                    Some(self.backend.to_host(&self.backend.select_rows(t, &rows)?)?)
                }
                _ => None,
            };
            let rows = drawn.as_ref().map(|(rows, _)| rows.as_slice());
            let ids = sample_step(&self.backend, step, &mut samplers, rows)?;
            if let Some((_, vocab, data)) = &host {
                for (j, &(row, top)) in lp_rows.iter().enumerate() {
                    let logits = &data[j * vocab..(j + 1) * vocab];
                    logprobs.push((sampling[row], token_logprob(logits, ids[row], top)));
                }
            }
            for (&k, id) in sampling.iter().zip(ids) {
                sampled[k] = Some(id);
            }
        }
        let done: HashSet<RequestId> = self
            .scheduler
            .postprocess(&batch, &sampled)
            .into_iter()
            .collect();
        for (k, (s, tok)) in batch.seqs.iter().zip(&sampled).enumerate() {
            let Some(tok) = *tok else { continue };
            let lp = logprobs
                .iter()
                .position(|&(j, _)| j == k)
                .map(|i| logprobs.swap_remove(i).1);
            let out = self.deliver(s.seq_id, tok, done.contains(&s.seq_id), lp)?;
            outputs.push(out);
        }
        self.add_times(started, planned, ran);
        Ok(())
    }

    /// Runs `requests` to completion (offline batch inference); outputs in the order given.
    pub fn generate(
        &mut self,
        requests: impl IntoIterator<Item = (Prompt, SamplingParams)>,
    ) -> Result<Vec<Output>> {
        let mut order = Vec::new();
        let mut outs: HashMap<RequestId, Output> = HashMap::new();
        for (prompt, params) in requests {
            let id = self.add_request(prompt, params)?;
            order.push(id);
            outs.insert(id, Output::new(id));
        }
        while order
            .iter()
            .any(|id| outs.get(id).is_some_and(|o| o.finish_reason.is_none()))
        {
            for o in self.step()? {
                if let Some(out) = outs.get_mut(&o.id) {
                    out.push(&o);
                }
            }
        }
        order
            .iter()
            .map(|id| {
                outs.remove(id)
                    .ok_or_else(|| KestrelError::Engine(format!("request {id} has no output")))
            })
            .collect()
    }
}
