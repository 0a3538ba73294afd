//! `kestrel quantize IN OUT --type T`: an HF safetensors checkpoint to a Q8_0 / Q4_0 / Q4_K_M GGUF file
//! that llama.cpp and Kestrel load.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use kestrel::formats::gguf_export::GgufExport;
use kestrel::formats::source::ModelSource;
use kestrel::formats::HostTensor;
use kestrel::quant::QuantType;

use crate::common::{parse_quant, QUANT_TYPES_HELP};

fn type_help() -> String {
    format!("The quantization:\n\n{QUANT_TYPES_HELP}")
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The checkpoint: an HF directory (config.json, tokenizer.json, *.safetensors in BF16/F16/F32) or
    /// an HF repo id such as Qwen/Qwen3-0.6B
    pub input: String,
    /// The GGUF file to write (replaced if it exists)
    pub output: PathBuf,
    /// The quantization: q8_0, q4_0 or q4_k_m
    #[arg(long = "type", short = 't', value_name = "TYPE", value_parser = parse_quant, long_help = type_help())]
    pub quant: QuantType,
    /// CPU threads (default: all cores)
    #[arg(long, allow_negative_numbers = true)]
    pub threads: Option<usize>,
}

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    if let Some(n) = args.threads {
        anyhow::ensure!(n > 0, "invalid value for --threads: must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    anyhow::ensure!(
        !args.output.is_dir(),
        "{} is a directory: OUT is the GGUF file to write, e.g. {}/model-{}.gguf",
        args.output.display(),
        args.output.display(),
        args.quant.name()
    );
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        anyhow::ensure!(
            parent.is_dir(),
            "cannot write {}: the directory {} does not exist",
            args.output.display(),
            parent.display()
        );
    }
    let t0 = Instant::now();
    let source =
        ModelSource::open(&args.input).with_context(|| format!("opening '{}'", args.input))?;
    let mut export = GgufExport::new(&source, args.quant)
        .with_context(|| format!("reading '{}'", args.input))?;
    // A repo id's last part, not the hub cache's snapshot hash.
    if let Some(name) = std::path::Path::new(args.input.trim_end_matches('/')).file_name() {
        export.set_name(name.to_string_lossy());
    }
    if !export.skipped.is_empty() {
        eprintln!(
            "not written (no GGUF name; not weights the model uses): {}",
            export.skipped.join(", ")
        );
    }
    let bar = indicatif::ProgressBar::new(export.tensor_count() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} tensors [{elapsed_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let tick = |t: &HostTensor| {
        bar.set_message(format!("{} {}", t.name, t.ty));
        bar.inc(1);
    };
    let summary = export.write(&args.output, Some(&tick));
    bar.finish_and_clear();
    let summary = summary.with_context(|| {
        format!(
            "quantizing '{}' to {} at {}",
            args.input,
            args.quant,
            args.output.display()
        )
    })?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let types: Vec<String> = summary
        .by_type
        .iter()
        .map(|(ty, (n, b))| format!("{ty} {n} ({:.1} MiB)", mib(*b)))
        .collect();
    let c = export.config();
    eprintln!(
        "wrote {}: {} {}, {} layers, {} tensors, {:.1} MiB [{}] in {:.1} s",
        args.output.display(),
        c.arch.name(),
        args.quant,
        c.num_layers,
        summary.tensors,
        mib(summary.bytes),
        types.join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
