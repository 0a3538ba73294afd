//! Decode steps in CUDA graphs: one graph per (batch-size bucket, block-table width, how tokens are
//! picked), captured on
//! the second step of that shape (the first runs eagerly: it compiles kernels, creates the cuBLAS
//! handle, RoPE tables and the attention workspace) and replayed after.
//!
//! Invariants:
//! - A step is padded to its bucket (1, 2, 4, ..., [`MAX_GRAPH_BATCH`]) whether it replays a graph
//!   or runs eagerly (`--eager`), so both run the same kernels with the same arguments and give
//!   bit-identical results.
//! - Everything a graph reads or writes outside its own allocations lives at fixed addresses owned by
//!   its [`DecodeEntry`]: the metadata buffer, the token-id input, the argmax output (greedy steps) or
//!   the logits copy (sampled steps: the sampler runs after the replay, on that copy, with the step's
//!   draws), the attention workspace. The step's inputs are copied into them before the replay, outside the graph; the
//!   activations are allocated and freed inside the graph (stream-ordered allocation nodes).
//! - While a step runs, the backend's ops read the staged buffers ([`Staged`]) instead of uploading:
//!   `prepare_metadata`, `embed` and `attention` look at [`CudaBackend::staged`].
//! - The weights and the KV cache are baked in: the graphs belong to one model instance (the caller's
//!   `forward_id`) and one cache (its buffers' addresses and size), and are dropped when a step comes
//!   with another (the entries' buffers stay, warmed up).
//! - Decode attention grids depend on the bucket only (see `attention::decode_partitions`), never on
//!   context lengths, so a graph replays right as sequences grow; the table width grows by powers of
//!   two (a new graph each time).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, DevicePtr, PinnedHostSlice};
use kestrel::backend::{AttnMetadata, DecodeForward, DecodePick};
use kestrel::{KestrelError, Result};

use super::metadata::{decode_pool, upload_decode, MetaPool};
use super::tensor::CudaKvCache;
use super::{be, CudaBackend};
use crate::dtype::Bf16;
use crate::ops::argmax::{argmax, feed_decode_inputs};

/// The largest batch a decode graph covers; larger steps run eagerly, unpadded.
pub const MAX_GRAPH_BATCH: usize = 256;
/// The narrowest block table of a graph (in blocks): 256 tokens at block size 16.
const MIN_TABLE_WIDTH: usize = 16;

/// The batch-size bucket of `n` sequences: the next power of two. (Multiples of 8 or 16 above that
/// were measured and lost: H100, 0.6B, bench.py 15,960 -> 15,485 / 15,527 output tok/s; the GPU
/// time saved on padded rows was ~1%, less than capturing the extra graphs cost the host.)
pub fn decode_bucket(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// The decode attention's scratch: per-partition partial results, and the partition counters that
/// elect the CTA merging them. The counters are zero between launches (the kernel resets them), so
/// they live in a buffer of their own: a scratch laid out for another shape never leaves data there.
pub(crate) struct AttnScratch {
    pub partials: CudaSlice<f32>,
    pub counters: CudaSlice<u32>,
}

/// The attention scratch of one decode shape, sized by its first (eager) step.
pub(crate) type Workspace = Arc<Mutex<Option<AttnScratch>>>;

/// What the ops of a running decode step read instead of host inputs.
#[derive(Clone)]
pub(crate) struct Staged {
    pub bucket: usize,
    pub width: usize,
    pub meta: MetaPool,
    pub ids: Arc<CudaSlice<u32>>,
    pub workspace: Workspace,
    /// Inside a graph capture: nothing may be allocated outside the graph.
    pub capturing: bool,
}

/// A decode shape: (bucket, block-table width, sampled).
pub(crate) type EntryKey = (usize, usize, bool);

/// The fixed buffers and the graph of one (bucket, width, sampled).
pub(crate) struct DecodeEntry {
    meta: MetaPool,
    ids: Arc<CudaSlice<u32>>,
    /// The argmax of greedy steps (shared while a later step's inputs are fed from it).
    out: Arc<CudaSlice<u32>>,
    workspace: Workspace,
    warmed: bool,
    /// Capture failed once: this shape runs eagerly from then on.
    failed: bool,
    graph: Option<SendGraph>,
}

/// `CudaGraph` holds raw driver handles; it is used only under the backend's `decode` mutex.
struct SendGraph(CudaGraph);
// SAFETY: the graph is launched and dropped only while holding the mutex around `DecodeGraphs`,
// so no two threads touch it at once (what the driver requires of graph objects).
unsafe impl Send for SendGraph {}

#[derive(Default)]
pub(crate) struct DecodeGraphs {
    /// What the entries' graphs bake in: the model (its weights) and the KV cache (its buffers'
    /// addresses and size).
    key: Vec<u64>,
    entries: HashMap<EntryKey, DecodeEntry>,
    /// Sampled steps copy their logits here, out of the graph's own memory: one buffer of
    /// [`MAX_GRAPH_BATCH`] rows shared by every shape (allocated by the first sampled step, eagerly;
    /// a new model, whose graphs are all dropped first, may need another width), and the row width.
    logits: Option<(CudaSlice<Bf16>, usize)>,
}

fn graph_key(be: &CudaBackend, forward_id: u64, cache: &CudaKvCache) -> Vec<u64> {
    let s = be.device().stream();
    let spec = &cache.spec;
    let mut key = vec![forward_id, spec.num_blocks as u64, spec.block_size as u64];
    for buf in cache.k.iter().chain(&cache.v) {
        key.push(buf.device_ptr(s).0);
    }
    key
}

/// Clears the backend's staged inputs when a step ends, however it ends.
struct Unstage<'a>(&'a CudaBackend);
impl Drop for Unstage<'_> {
    fn drop(&mut self) {
        *self.0.staged.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl CudaBackend {
    /// Whether decode steps use CUDA graphs (the default; `--eager` turns them off).
    pub fn cuda_graphs(&self) -> bool {
        self.graphs_enabled.load(Ordering::Relaxed)
    }

    pub fn set_cuda_graphs(&self, on: bool) {
        self.graphs_enabled.store(on, Ordering::Relaxed);
    }

    /// Decode graphs captured (and not dropped) so far, over all shapes.
    pub fn captured_decode_graphs(&self) -> usize {
        let graphs = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        graphs
            .entries
            .values()
            .filter(|e| e.graph.is_some())
            .count()
    }

    pub(crate) fn staged(&self) -> Option<Staged> {
        self.staged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A decode step of `meta.seqs.len()` ≤ [`MAX_GRAPH_BATCH`] sequences, padded to its bucket;
    /// returns its tokens and its shape. `fed`: the shape of the step before, whose argmax
    /// ([`FED_FROM_PREVIOUS`](crate::ops::argmax::FED_FROM_PREVIOUS) rows of `tokens`) feeds this
    /// one's inputs on the device. `keep` (greedy steps only): the tokens are copied there
    /// asynchronously instead of read back (none are returned).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn graph_decode_step(
        &self,
        forward_id: u64,
        tokens: &[u32],
        meta: &AttnMetadata,
        cache: &mut CudaKvCache,
        forward: &mut DecodeForward<'_, Self>,
        pick: DecodePick<'_>,
        fed: Option<EntryKey>,
        keep: Option<&mut PinnedHostSlice<u32>>,
    ) -> Result<(Vec<u32>, EntryKey)> {
        let prep_start = std::time::Instant::now();
        let dev = self.device();
        let n = meta.seqs.len();
        let sampled = matches!(pick, DecodePick::Sample(..));
        let bucket = decode_bucket(n);
        let bs = meta.block_size.max(1);
        let used = meta
            .seqs
            .iter()
            .map(|s| s.context_len.div_ceil(bs))
            .max()
            .unwrap_or(1);
        let width = used.next_power_of_two().max(MIN_TABLE_WIDTH);

        let mut graphs = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        let key = graph_key(self, forward_id, cache);
        if graphs.key != key {
            // The buffers stay good for another model or cache; the graphs don't, and another
            // model may need a larger attention workspace: one eager step first, as for a new shape.
            for e in graphs.entries.values_mut() {
                e.graph = None;
                e.warmed = false;
            }
            graphs.key = key;
        }
        let DecodeGraphs {
            entries,
            logits: kept_logits,
            ..
        } = &mut *graphs;
        let key = (bucket, width, sampled);
        let fed_from = match fed {
            Some(k) => Some(
                entries
                    .get(&k)
                    .ok_or_else(|| KestrelError::Backend("a fed decode step has no source".into()))?
                    .out
                    .clone(),
            ),
            None => None,
        };
        let entry = match entries.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(DecodeEntry {
                meta: decode_pool(dev, bucket, width)?,
                ids: Arc::new(self.alloc::<u32>(bucket)?),
                out: Arc::new(self.alloc::<u32>(bucket)?),
                workspace: Arc::new(Mutex::new(None)),
                warmed: false,
                failed: false,
                graph: None,
            }),
        };

        // The step's inputs, into the fixed buffers (outside any capture).
        upload_decode(dev, &entry.meta, meta, bucket, width)?;
        let mut padded = vec![0u32; bucket];
        padded[..n].copy_from_slice(tokens);
        let ids = Arc::get_mut(&mut entry.ids)
            .ok_or_else(|| KestrelError::Backend("decode token ids still staged".into()))?;
        dev.stream()
            .memcpy_htod(&padded, ids)
            .map_err(|e| KestrelError::Backend(format!("uploading token ids: {e}")))?;
        if let Some(prev) = fed_from {
            feed_decode_inputs(dev, ids, &*prev, n).map_err(be)?;
        }

        let stage = |capturing| Staged {
            bucket,
            width,
            meta: entry.meta.clone(),
            ids: entry.ids.clone(),
            workspace: entry.workspace.clone(),
            capturing,
        };
        let mut run = |out: &mut Arc<CudaSlice<u32>>,
                       kept: &mut Option<(CudaSlice<Bf16>, usize)>,
                       staged: Staged|
         -> Result<()> {
            let capturing = staged.capturing;
            *self.staged.lock().unwrap_or_else(|e| e.into_inner()) = Some(staged);
            let _unstage = Unstage(self);
            let before = dev.launches();
            let logits = forward(&padded, meta, cache)?;
            if logits.rows != bucket {
                return Err(KestrelError::Backend(format!(
                    "a decode step of {bucket} rows returned {} logits rows",
                    logits.rows
                )));
            }
            if sampled {
                if kept.as_ref().is_none_or(|k| k.1 != logits.cols) {
                    if capturing {
                        return Err(KestrelError::Backend(
                            "decode logits buffer missing inside a graph capture".into(),
                        ));
                    }
                    *kept = None; // free the old one first
                    let rows = MAX_GRAPH_BATCH;
                    *kept = Some((self.alloc::<Bf16>(rows * logits.cols)?, logits.cols));
                }
                let (buf, _) = kept.as_mut().expect("allocated above");
                let mut rows = buf.slice_mut(0..logits.data.len());
                dev.stream()
                    .memcpy_dtod(&logits.data, &mut rows)
                    .map_err(|e| KestrelError::Backend(format!("copying decode logits: {e}")))?;
                dev.count_launch();
            } else {
                let out = Arc::get_mut(out).ok_or_else(|| {
                    KestrelError::Backend("decode token ids still feeding a step".into())
                })?;
                argmax(dev, &logits.data, logits.cols, out).map_err(super::be)?;
            }
            drop(logits);
            self.step_kernels
                .store(dev.launches() - before, Ordering::Relaxed);
            Ok(())
        };

        if self.cuda_graphs() && entry.warmed && !entry.failed && entry.graph.is_none() {
            let s = dev.stream();
            s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| KestrelError::Backend(format!("starting a graph capture: {e}")))?;
            let ran = run(&mut entry.out, kept_logits, stage(true));
            let graph = s.end_capture(CUgraphInstantiate_flags(0));
            match (ran, graph) {
                (Ok(()), Ok(Some(g))) => entry.graph = Some(SendGraph(g)),
                (ran, graph) => {
                    let why = match (ran, graph) {
                        (Err(e), _) => e.to_string(),
                        (_, Err(e)) => e.to_string(),
                        _ => "empty graph".to_string(),
                    };
                    eprintln!(
                        "warning: capturing a CUDA graph of a {bucket}-sequence decode step failed \
                         ({why}); that batch size runs eagerly"
                    );
                    entry.failed = true;
                }
            }
        }
        let prep_ns = prep_start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.decode_prep_ns.fetch_add(prep_ns, Ordering::Relaxed);
        match &entry.graph {
            Some(g) if self.cuda_graphs() => {
                g.0.launch()
                    .map_err(|e| KestrelError::Backend(format!("replaying a decode graph: {e}")))?
            }
            _ => {
                run(&mut entry.out, kept_logits, stage(false))?;
                entry.warmed = true;
            }
        }
        if let DecodePick::Sample(rows, penalties) = pick {
            let (buf, cols) = kept_logits
                .as_ref()
                .ok_or_else(|| KestrelError::Backend("no decode logits to sample".into()))?;
            let view = buf.slice(0..n * cols);
            let ids = super::sampling::sample_rows(self, &view, *cols, rows, penalties)?;
            return Ok((ids, key));
        }
        let ids = entry.out.slice(0..n);
        match keep {
            Some(host) => {
                // A copy sized by its destination: the first n entries of the pinned buffer (whose
                // earlier copies were all waited for). The caller records the event to wait on.
                let err = |e: cudarc::driver::DriverError| {
                    KestrelError::Backend(format!("copying token ids: {e}"))
                };
                let dst = &mut host.as_mut_slice().map_err(err)?[..n];
                dev.stream().memcpy_dtoh(&ids, dst).map_err(err)?;
                Ok((Vec::new(), key))
            }
            None => Ok((dev.download(&ids, "token ids").map_err(be)?, key)),
        }
    }
}
