"""llama.cpp's perplexity (llama-perplexity's method, through llama-cpp-python) of a GGUF model on a text,
to compare with `kestrel perplexity`: the text's tokens (add_special, as llama-perplexity) in chunks of
n_ctx, each evaluated from an empty cache (first token -> BOS where the vocab adds one), the second half
of each scored: NLL of token i+1 under the logits of position i.

Usage: python3 scripts/llama_cpp_perplexity.py MODEL.gguf TEXT [--ctx 512] [--chunks N] [--out FILE.json]
Needs llama-cpp-python (CPU build) and numpy. Made testdata/real/qwen25_perplexity.json.
"""
import argparse
import json
import math

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="n_batch (default: --ctx)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=a.ctx, n_batch=a.batch or a.ctx, n_threads=a.threads,
                logits_all=True, verbose=False)
    text = open(a.text, encoding="utf-8").read()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    chunks = len(tokens) // a.ctx
    if a.chunks is not None:
        chunks = min(chunks, a.chunks)
    first = a.ctx // 2
    nll, count, running = 0.0, 0, []
    for c in range(chunks):
        chunk = list(tokens[c * a.ctx:(c + 1) * a.ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:a.ctx], dtype=np.float64)
        for i in range(first, a.ctx - 1):
            row = logits[i]
            m = row.max()
            nll -= row[chunk[i + 1]] - m - math.log(np.exp(row - m).sum())
            count += 1
        running.append(math.exp(nll / count))
        print(f"[{c + 1}]{running[-1]:.4f}", flush=True)
    result = {
        "model": a.model.split("/")[-1],
        "text": a.text.split("/")[-1],
        "n_ctx": a.ctx,
        "chunks": chunks,
        "tokens": len(tokens),
        "add_bos": add_bos,
        "scored": count,
        "ppl": math.exp(nll / count),
        "running": running,
        "llama_cpp_python": __import__("llama_cpp").__version__,
    }
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
