//! Asynchronous scheduling on the GPU ([`Backend::launch_decode`]): a greedy decode step is launched
//! with its input ids fed on the device from the previous step's argmax (rows the host names), and
//! its own argmax is copied to pinned host memory behind it, so the host plans and launches step N+1
//! while step N runs and reads N's tokens only after. Other steps (sampled, or over
//! [`MAX_GRAPH_BATCH`] sequences) run at launch with their inputs resolved on the host.
//!
//! Why the copy is queued at launch: the next step may replay the same graph and overwrite the
//! argmax buffer before the host reads it; the copy is ordered before it on the one stream.

use std::collections::HashMap;

use cudarc::driver::{CudaEvent, PinnedHostSlice};
use kestrel::backend::{
    AttnMetadata, Backend, DecodeForward, DecodeInput, DecodePick, PendingDecode,
};
use kestrel::{KestrelError, Result};

use super::graphs::{EntryKey, MAX_GRAPH_BATCH};
use super::tensor::CudaKvCache;
use super::CudaBackend;
use crate::ops::argmax::FED_FROM_PREVIOUS;

/// Launched greedy steps not read back yet, by handle, and spare pinned buffers.
#[derive(Default)]
pub(crate) struct Launched {
    next: u64,
    steps: HashMap<u64, LaunchedStep>,
    spare: Vec<PinnedHostSlice<u32>>,
}

struct LaunchedStep {
    /// Where the step's tokens land (its first `n` entries), once `copied` has happened.
    host: PinnedHostSlice<u32>,
    copied: CudaEvent,
    n: usize,
    /// The step's decode shape: its argmax buffer feeds the next step.
    key: EntryKey,
}

fn unknown(h: u64) -> KestrelError {
    KestrelError::Backend(format!("no launched decode step {h}"))
}

impl CudaBackend {
    /// Lets the engine pipeline decode steps ([`Backend::async_decode`]); on unless
    /// `KESTREL_ASYNC_DECODE=0`.
    pub fn set_async_decode(&self, on: bool) {
        self.async_decode
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The tokens of `p`'s step on the host (waiting for its copy), leaving it launched.
    fn tokens_of(&self, p: &PendingDecode) -> Result<Vec<u32>> {
        if let Some(t) = p.tokens() {
            return Ok(t.to_vec());
        }
        let h = p.handle().ok_or_else(|| unknown(u64::MAX))?;
        let launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        let step = launched.steps.get(&h).ok_or_else(|| unknown(h))?;
        self.read_tokens(step)
    }

    /// Waits for a launched step's copy and reads its tokens.
    fn read_tokens(&self, step: &LaunchedStep) -> Result<Vec<u32>> {
        let err = |e: cudarc::driver::DriverError| {
            KestrelError::Backend(format!("reading decode tokens: {e}"))
        };
        let start = std::time::Instant::now();
        step.copied.synchronize().map_err(err)?;
        self.device().count_wait(start.elapsed());
        Ok(step.host.as_slice().map_err(err)?[..step.n].to_vec())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch_decode_async(
        &self,
        forward_id: u64,
        inputs: &[DecodeInput],
        previous: Option<&PendingDecode>,
        meta: &AttnMetadata,
        cache: &mut CudaKvCache,
        forward: &mut DecodeForward<'_, Self>,
        pick: DecodePick<'_>,
    ) -> Result<PendingDecode> {
        let n = inputs.len();
        let on_device = previous.and_then(PendingDecode::handle);
        if !matches!(pick, DecodePick::Argmax) || n == 0 || n > MAX_GRAPH_BATCH {
            let prev = previous.map(|p| self.tokens_of(p)).transpose()?;
            let tokens = kestrel::backend::async_decode::resolve_inputs(
                inputs,
                prev.map(PendingDecode::ready).as_ref(),
            )?;
            let ids = Backend::decode_step(self, forward_id, &tokens, meta, cache, forward, pick)?;
            return Ok(PendingDecode::ready(ids));
        }
        let (fed, prev_n, mut host) = {
            let mut launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
            let (fed, prev_n) = match on_device {
                Some(h) => {
                    let s = launched.steps.get(&h).ok_or_else(|| unknown(h))?;
                    (Some(s.key), s.n)
                }
                None => (None, 0),
            };
            let host = match launched.spare.pop() {
                Some(h) => h,
                // SAFETY: every read of the buffer is of entries a copy wrote first. Cached (not
                // write-combined, cudarc's default): the host reads it.
                None => unsafe {
                    self.device()
                        .context()
                        .alloc_pinned_with_flags::<u32>(MAX_GRAPH_BATCH, 0)
                }
                .map_err(|e| KestrelError::Backend(format!("pinned host memory: {e}")))?,
            };
            (fed, prev_n, host)
        };
        let ready = previous.and_then(PendingDecode::tokens);
        let tokens: Vec<u32> = inputs
            .iter()
            .map(|i| match *i {
                DecodeInput::Token(t) => Ok(t),
                DecodeInput::Previous(r) if fed.is_some() && r < prev_n => {
                    Ok(FED_FROM_PREVIOUS | r as u32)
                }
                DecodeInput::Previous(r) => {
                    ready.and_then(|t| t.get(r).copied()).ok_or_else(|| {
                        KestrelError::Backend(format!("decode input row {r} of no previous step"))
                    })
                }
            })
            .collect::<Result<_>>()?;
        let launched = self.graph_decode_step(
            forward_id,
            &tokens,
            meta,
            cache,
            forward,
            pick,
            fed,
            Some(&mut host),
        );
        let mut state = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = launched.and_then(|(_, key)| {
            let copied = self.device().stream().record_event(None).map_err(|e| {
                KestrelError::Backend(format!("recording a decode step's copy: {e}"))
            })?;
            Ok((key, copied))
        });
        let (key, copied) = match recorded {
            Ok(r) => r,
            Err(e) => {
                state.spare.push(host);
                return Err(e);
            }
        };
        let h = state.next;
        state.next += 1;
        state.steps.insert(
            h,
            LaunchedStep {
                host,
                copied,
                n,
                key,
            },
        );
        Ok(PendingDecode::on_device(h))
    }

    pub(crate) fn collect_decode_async(&self, pending: PendingDecode) -> Result<Vec<u32>> {
        let Some(h) = pending.handle() else {
            return pending.into_tokens();
        };
        let step = {
            let mut launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
            launched.steps.remove(&h).ok_or_else(|| unknown(h))?
        };
        let tokens = self.read_tokens(&step);
        let mut launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        launched.spare.push(step.host);
        tokens
    }
}
