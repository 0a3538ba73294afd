//! `kestrel inspect`: what is in a model file, without loading the weights.

use anyhow::{Context, Result};
use clap::Args;
use kestrel::engine::loaded::load_text_side;
use kestrel::formats::source::ModelSource;
use std::collections::BTreeMap;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model: an HF directory, a .gguf file, or an HF repo id
    pub model: String,
    /// List every tensor
    #[arg(long)]
    pub tensors: bool,
    /// Print the whole chat template
    #[arg(long)]
    pub template: bool,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let source =
        ModelSource::open(&args.model).with_context(|| format!("opening '{}'", args.model))?;
    let cfg = source.config()?;
    println!("model:        {}", source.path().display());
    println!("architecture: {}", cfg.arch.name());
    println!(
        "shape:        {} layers, hidden {}, ffn {}, heads {} (kv {}), head_dim {}, vocab {}",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    println!(
        "              rope theta {}, rms eps {:e}, context {}, tied embeddings {}, qkv bias {}, q/k norm {}",
        cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings, cfg.tie_word_embeddings, cfg.qkv_bias, cfg.qk_norm
    );
    let tensors: Vec<(String, String, Vec<usize>, usize)> = match &source {
        ModelSource::HfDir(d) => {
            let mut names: Vec<&str> = d.names().collect();
            names.sort_unstable();
            names
                .into_iter()
                .filter_map(|n| d.tensor(n).ok())
                .map(|t| {
                    (
                        t.name.clone(),
                        t.ty.to_string(),
                        t.shape.clone(),
                        t.bytes().len(),
                    )
                })
                .collect()
        }
        ModelSource::Gguf(g) => {
            println!(
                "gguf:         version {}, {} metadata keys",
                g.version,
                g.metadata.len()
            );
            g.tensors
                .iter()
                .filter_map(|ti| g.tensor(&ti.name).ok())
                .map(|t| {
                    (
                        t.name.clone(),
                        t.ty.to_string(),
                        t.shape.clone(),
                        t.bytes().len(),
                    )
                })
                .collect()
        }
    };
    let mut by_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, ty, _, bytes) in &tensors {
        let e = by_type.entry(ty.clone()).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    let total: usize = tensors.iter().map(|t| t.3).sum();
    println!(
        "tensors:      {} tensors, {:.1} MiB",
        tensors.len(),
        total as f64 / (1 << 20) as f64
    );
    for (ty, (n, bytes)) in &by_type {
        println!(
            "              {ty:>5}: {n:4} tensors, {:.1} MiB",
            *bytes as f64 / (1 << 20) as f64
        );
    }
    if args.tensors {
        for (name, ty, shape, bytes) in &tensors {
            println!("  {name:48} {ty:>5} {shape:?} {bytes} B");
        }
    }
    match load_text_side(&source) {
        Ok((tok, template)) => {
            println!(
                "tokenizer:    {} tokens; eos {:?}",
                tok.vocab_size(),
                cfg.eos_token_ids
            );
            match (template, &source) {
                (None, _) => println!("chat template: none"),
                (Some(_), _) if !args.template => {
                    println!("chat template: yes (--template prints it)")
                }
                (Some(_), ModelSource::Gguf(g)) => {
                    println!("chat template:\n{}", g.get_str("tokenizer.chat_template")?)
                }
                (Some(_), ModelSource::HfDir(d)) => {
                    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
                        d.dir.join("tokenizer_config.json"),
                    )?)?;
                    println!(
                        "chat template:\n{}",
                        cfg["chat_template"]
                            .as_str()
                            .unwrap_or("(not a single string)")
                    );
                }
            }
        }
        Err(e) => println!("tokenizer:    unavailable ({e})"),
    }
    Ok(())
}
