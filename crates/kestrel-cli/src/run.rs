//! `kestrel run`: one prompt in, the reply streamed out, speeds on stderr.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kestrel::engine::generate::generate;
use serde_json::json;

use kestrel::backend::Backend;

use crate::common::{ModelArgs, Ready, SamplingArgs, WithModel};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System prompt
    #[arg(long)]
    pub system: Option<String>,
    /// Turn Qwen3's thinking off (enable_thinking=false in the chat template)
    #[arg(long)]
    pub no_think: bool,
    /// Plain completion: feed the prompt as is, without the chat template
    #[arg(long)]
    pub raw: bool,
    /// The prompt
    pub prompt: String,
}

pub fn run(args: RunArgs) -> Result<()> {
    args.sampling.params()?;
    args.model.clone().dispatch(args)
}

impl WithModel for RunArgs {
    fn run<B: Backend>(self, ready: Ready<B>) -> Result<()> {
        run_with(self, ready)
    }
}

fn run_with<B: Backend>(args: RunArgs, ready: Ready<B>) -> Result<()> {
    let params = args.sampling.params()?;
    let context = args.model.context(&ready)?;
    let Ready {
        backend, loaded, ..
    } = ready;
    let text = if args.raw {
        args.prompt.clone()
    } else {
        let template = loaded.chat_template.as_ref().context(
            "this model has no chat template (tokenizer_config.json or GGUF tokenizer.chat_template); use --raw for plain completion",
        )?;
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": args.prompt}));
        template.render(&json!(messages), None, true, Some(!args.no_think))?
    };
    let prompt = loaded.tokenizer.encode(&text, !args.raw)?;
    let mut stdout = std::io::stdout().lock();
    let stats = generate(
        &backend,
        &loaded.model,
        &loaded.tokenizer,
        &prompt,
        &params,
        &loaded.eos_token_ids,
        context,
        |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        },
    )?;
    let _ = writeln!(stdout);
    eprintln!(
        "\nprompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | {:?}",
        stats.prompt_tokens,
        stats.prefill_tok_s(),
        stats.generated_tokens,
        stats.decode_tok_s(),
        stats.finish_reason
    );
    Ok(())
}
