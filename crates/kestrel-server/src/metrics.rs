//! `GET /metrics` in Prometheus' text format: requests by endpoint and status, prompt and generated
//! tokens, requests in flight, the engine's running / waiting sequences and KV blocks in use, and
//! time-to-first-token / time-per-output-token histograms. Also the admission limit: past
//! `max_in_flight` requests a new one gets 503.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use kestrel::engine::gauges::Gauges;
use kestrel::engine::request::RequestOutput;

use crate::error::ApiError;

/// Cumulative counts per upper bound (seconds), Prometheus-style.
struct Histogram {
    bounds: &'static [f64],
    counts: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    fn observe(&self, v: f64) {
        let mut g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (c, &b) in g.0.iter_mut().zip(self.bounds) {
            if v <= b {
                *c += 1;
            }
        }
        g.1 += v;
        g.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let g = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in g.0.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            g.2, g.1, g.2
        );
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const TPOT_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: usize,
    ttft: Histogram,
    tpot: Histogram,
}

impl Metrics {
    pub fn new(max_in_flight: usize) -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            ttft: Histogram::new(TTFT_BOUNDS),
            tpot: Histogram::new(TPOT_BOUNDS),
        }
    }

    pub fn count_request(&self, endpoint: &'static str, status: StatusCode) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint, status.as_u16())).or_default() += 1;
    }

    /// A slot for one more generation request, or 503 when `max_in_flight` are being served.
    pub fn admit(self: &Arc<Self>) -> Result<Tracker, ApiError> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let tracker = Tracker {
            metrics: self.clone(),
            start: Instant::now(),
            first: None,
        };
        if before >= self.max_in_flight {
            return Err(ApiError::overloaded(self.max_in_flight)); // the tracker's drop gives the slot back
        }
        Ok(tracker)
    }

    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP kestrel_requests_total HTTP requests by endpoint and status\n# TYPE kestrel_requests_total counter");
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "kestrel_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let counters = [
            (
                "kestrel_prompt_tokens_total",
                "Prompt tokens of finished requests",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "kestrel_generation_tokens_total",
                "Tokens generated for finished requests",
                self.generation_tokens.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "kestrel_requests_in_flight",
                "Generation requests being served (queued or running)",
                self.in_flight.load(Ordering::Relaxed) as u64,
            ),
            (
                "kestrel_num_requests_running",
                "Sequences the engine has admitted",
                g.running as u64,
            ),
            (
                "kestrel_num_requests_waiting",
                "Sequences queued for admission (the queue depth)",
                g.waiting as u64,
            ),
            (
                "kestrel_kv_blocks_used",
                "KV cache blocks in use",
                g.kv_blocks_used as u64,
            ),
            (
                "kestrel_kv_blocks_total",
                "KV cache blocks",
                g.kv_blocks_total as u64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.render(
            &mut out,
            "kestrel_time_to_first_token_seconds",
            "Time from a request's arrival to its first token",
        );
        self.tpot.render(
            &mut out,
            "kestrel_time_per_output_token_seconds",
            "Time per generated token after the first",
        );
        out
    }
}

/// One admitted request: holds its in-flight slot (given back on drop, when its response is done or
/// its client gone) and times its outputs.
pub struct Tracker {
    metrics: Arc<Metrics>,
    start: Instant,
    first: Option<Instant>,
}

impl Tracker {
    pub fn on_output(&mut self, o: &RequestOutput) {
        let now = Instant::now();
        let m = &self.metrics;
        let first = *self.first.get_or_insert_with(|| {
            m.ttft.observe(now.duration_since(self.start).as_secs_f64());
            now
        });
        if o.finish_reason.is_some() {
            m.prompt_tokens
                .fetch_add(o.prompt_tokens as u64, Ordering::Relaxed);
            m.generation_tokens
                .fetch_add(o.completion_tokens as u64, Ordering::Relaxed);
            if o.completion_tokens > 1 {
                let per =
                    now.duration_since(first).as_secs_f64() / (o.completion_tokens - 1) as f64;
                m.tpot.observe(per);
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
