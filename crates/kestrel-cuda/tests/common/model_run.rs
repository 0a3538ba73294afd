//! Running a model for the quantized-model tests: teacher-forced logits, greedy tokens, the relative
//! L2 error, and a source whose quantized tensors are decoded exactly to f32 (the reference weights).

use std::path::PathBuf;

use kestrel::backend::Backend;
use kestrel::engine::generate::SingleSequence;
use kestrel::formats::source::TensorSource;
use kestrel::formats::HostTensor;
use kestrel::model::Qwen3Model;
use kestrel::quant;
use kestrel::Result;

/// A source's tensors with every quantized one decoded exactly to f32 (the reference weights).
pub struct Dequantized<'a, S: TensorSource>(pub &'a S);

impl<S: TensorSource> TensorSource for Dequantized<'_, S> {
    fn tensor(&self, hf_name: &str) -> Result<HostTensor> {
        let t = self.0.tensor(hf_name)?;
        if !t.ty.is_quantized() {
            return Ok(t);
        }
        let values = quant::dequantize_tensor(t.ty, t.bytes(), t.cols())?;
        Ok(HostTensor::from_f32(t.name, t.shape, &values))
    }
    fn has_tensor(&self, hf_name: &str) -> bool {
        self.0.has_tensor(hf_name)
    }
    fn path(&self) -> PathBuf {
        self.0.path()
    }
}

pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Teacher-forced logits of `tokens`: as prefill chunks (a third, then the rest over the cached
/// prefix) or token by token (decode steps).
pub fn teacher_forced<B: Backend>(
    b: &B,
    m: &Qwen3Model<B>,
    tokens: &[u32],
    decode: bool,
) -> Vec<f32> {
    let mut seq = SingleSequence::new(b, m, tokens.len().max(128)).unwrap();
    let mut rows = Vec::new();
    if decode {
        for t in tokens {
            rows.extend(seq.feed(b, m, std::slice::from_ref(t), true).unwrap());
        }
    } else {
        let split = tokens.len() / 3;
        rows.extend(seq.feed(b, m, &tokens[..split], true).unwrap());
        rows.extend(seq.feed(b, m, &tokens[split..], true).unwrap());
    }
    rows.concat()
}

pub fn greedy<B: Backend>(b: &B, m: &Qwen3Model<B>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = SingleSequence::new(b, m, (prompt.len() + n).max(128)).unwrap();
    let mut out = vec![seq.feed_argmax(b, m, prompt).unwrap()];
    while out.len() < n {
        let next = seq.feed_argmax(b, m, &[*out.last().unwrap()]).unwrap();
        out.push(next);
    }
    out
}

/// `json[key]` as token ids (golden files).
pub fn json_ids(json: &serde_json::Value, key: &str) -> Vec<u32> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("golden: no array {key}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// A raw little-endian f32 file (golden logits).
pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
