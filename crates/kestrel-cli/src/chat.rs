//! `kestrel chat`: an interactive conversation. Thinking (`<think>…</think>`) is shown dimmed, or hidden.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use clap::Args;
use kestrel::engine::generate::generate;
use serde_json::{json, Value};

use kestrel::backend::Backend;
use kestrel::engine::loaded::LoadedModel;

use crate::common::{ModelArgs, Ready, SamplingArgs, WithModel};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System prompt
    #[arg(long)]
    pub system: Option<String>,
    /// Turn Qwen3's thinking off
    #[arg(long)]
    pub no_think: bool,
    /// Don't print the model's thinking
    #[arg(long)]
    pub hide_think: bool,
}

/// Styles the `<think>` part of streamed text.
struct ThinkFilter {
    in_think: bool,
    hide: bool,
    color: bool,
}

impl ThinkFilter {
    fn render(&mut self, piece: &str, out: &mut String) {
        let mut rest = piece;
        loop {
            let tag = if self.in_think { "</think>" } else { "<think>" };
            let (before, after) = match rest.find(tag) {
                Some(i) => (&rest[..i], Some(&rest[i + tag.len()..])),
                None => (rest, None),
            };
            if !(self.in_think && self.hide) {
                out.push_str(before);
            }
            match after {
                Some(a) => {
                    self.in_think = !self.in_think;
                    if self.color && !self.hide {
                        out.push_str(if self.in_think { "\x1b[2m" } else { "\x1b[0m" });
                    }
                    rest = a;
                }
                None => break,
            }
        }
    }
}

pub fn chat(args: ChatArgs) -> Result<()> {
    args.sampling.params()?;
    args.model.clone().dispatch(args)
}

impl WithModel for ChatArgs {
    fn run<B: Backend>(self, ready: Ready<B>) -> Result<()> {
        chat_with(self, ready)
    }
}

fn chat_with<B: Backend>(args: ChatArgs, ready: Ready<B>) -> Result<()> {
    let params = args.sampling.params()?;
    let context = args.model.context(&ready)?;
    let Ready {
        backend, loaded, ..
    } = ready;
    let template = loaded
        .chat_template
        .as_ref()
        .context("this model has no chat template, so it cannot chat; try `kestrel run --raw`")?;
    let interactive = std::io::stdin().is_terminal();
    let color = std::io::stdout().is_terminal();
    let mut history: Vec<Value> = Vec::new();
    let reset = |h: &mut Vec<Value>| {
        h.clear();
        if let Some(s) = &args.system {
            h.push(json!({"role": "system", "content": s}));
        }
    };
    reset(&mut history);
    eprintln!(
        "kestrel chat: {} ({}; {}). /reset clears the history, /exit quits.",
        args.model.model,
        model_summary(&loaded),
        backend.name()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            print!("> ");
            std::io::stdout().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut history);
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(json!({"role": "user", "content": input}));
        let text = template.render(&json!(history), None, true, Some(!args.no_think))?;
        let prompt = loaded.tokenizer.encode(&text, true)?;
        let mut filter = ThinkFilter {
            in_think: false,
            hide: args.hide_think,
            color,
        };
        let mut reply = String::new();
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
                reply.push_str(piece);
                let mut shown = String::new();
                filter.render(piece, &mut shown);
                let _ = stdout.write_all(shown.as_bytes());
                let _ = stdout.flush();
            },
        )?;
        if color && filter.in_think {
            let _ = stdout.write_all(b"\x1b[0m");
        }
        let _ = writeln!(stdout);
        eprintln!(
            "({} tokens, {:.1} tok/s)",
            stats.generated_tokens,
            stats.decode_tok_s()
        );
        history.push(json!({"role": "assistant", "content": reply}));
    }
    Ok(())
}

fn model_summary<B: Backend>(loaded: &LoadedModel<B>) -> String {
    format!(
        "{}, {} layers",
        loaded.config.arch.name(),
        loaded.config.num_layers
    )
}

#[cfg(test)]
mod tests {
    use super::ThinkFilter;

    #[test]
    fn think_is_hidden_across_pieces() {
        let mut f = ThinkFilter {
            in_think: false,
            hide: true,
            color: false,
        };
        let mut out = String::new();
        for p in [
            "<think>",
            "plan",
            "</think>",
            "\n\nAnswer",
            " <think>x</think>y",
        ] {
            f.render(p, &mut out);
        }
        assert_eq!(out, "\n\nAnswer y");
    }
}
