//! `kestrel perplexity`: a text's perplexity under the model, with llama-perplexity's method (chunks
//! of --ctx-size tokens, the second half of each scored), so the numbers compare with llama.cpp's.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kestrel::backend::Backend;
use kestrel::engine::perplexity::{chunk_count, perplexity};

use crate::common::{ModelArgs, Ready, WithModel};

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text file to score (UTF-8). The chunk size is -c/--ctx-size, 512 by default here (as
    /// llama-perplexity)
    #[arg(short, long)]
    pub file: std::path::PathBuf,
    /// Score at most this many chunks [default: every whole chunk of the text]
    #[arg(long)]
    pub chunks: Option<usize>,
    /// The file's text, read before the model loads (a wrong path fails at once)
    #[arg(skip)]
    text: String,
}

pub fn perplexity_cmd(mut args: PerplexityArgs) -> Result<()> {
    args.text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading --file {}", args.file.display()))?;
    args.model.clone().dispatch(args)
}

impl WithModel for PerplexityArgs {
    fn run<B: Backend>(self, ready: Ready<B>) -> Result<()> {
        let Ready {
            backend, loaded, ..
        } = ready;
        let n_ctx = self.model.ctx_size.unwrap_or(512);
        // the tokenizer's own special tokens (a BOS where the model adds one), as llama-perplexity
        let tokens = loaded.tokenizer.encode(&self.text, true)?;
        let bos = loaded.tokenizer.encode("", true)?.first().copied();
        let chunks = chunk_count(tokens.len(), n_ctx, self.chunks);
        eprintln!(
            "{}: {} tokens, {chunks} chunks of {n_ctx} (the second half of each scored)",
            self.file.display(),
            tokens.len()
        );
        let start = std::time::Instant::now();
        let mut stdout = std::io::stdout().lock();
        let result = perplexity(
            &backend,
            &loaded.model,
            &tokens,
            n_ctx,
            bos,
            self.chunks,
            |p| {
                let _ = write!(stdout, "[{}]{:.4},", p.running.len(), p.ppl());
                let _ = stdout.flush();
            },
        )?;
        writeln!(stdout)?;
        writeln!(
            stdout,
            "Final estimate: PPL = {:.4} +/- {:.5}",
            result.ppl(),
            result.ppl_error()
        )?;
        eprintln!(
            "{} tokens scored in {:.1} s ({:.1} tok/s evaluated)",
            result.count,
            start.elapsed().as_secs_f64(),
            (chunks * n_ctx) as f64 / start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
