#!/usr/bin/env python3
"""Load on a running `kestrel serve`: C concurrent streaming clients, issue 6's performance line.

Usage: serve_load.py BASE_URL [--key K] [--model M] [--clients 64] [--requests 256] [--prompt-len 512]
                     [--min-tokens N] [--max-tokens 128] [--json]
Each client sends /v1/completions requests (a prompt of --prompt-len random token ids below --vocab,
ignore_eos, --max-tokens output tokens, streamed) one after another until --requests are done. With
--min-tokens, each request's output length is uniform in min..max (seeded): requests of one length all
finish in the same step, so the clients would send their next prompts together, wave after wave.
Prints output tokens/s over the whole run, and time to first token (median, p90) and time per output
token (median) per request. Standard library only (the GPU machine has no PyPI): raw HTTP/1.1.
"""
import argparse
import json
import random
import socket
import statistics
import threading
import time
import urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("--key", default="")
ap.add_argument("--model", default=None)
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--requests", type=int, default=256)
ap.add_argument("--prompt-len", type=int, default=512)
ap.add_argument("--max-tokens", type=int, default=128)
ap.add_argument("--min-tokens", type=int, default=None)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--vocab", type=int, default=10_000, help="prompt token ids are below this")
ap.add_argument("--json", action="store_true")
a = ap.parse_args()
u = urllib.parse.urlparse(a.base)
host, port, prefix = u.hostname, u.port, u.path.rstrip("/")


def request(method, path, body=None):
    """(status, body text) of one non-streamed request."""
    s = socket.create_connection((host, port), timeout=600)
    data = json.dumps(body).encode() if body is not None else b""
    s.sendall((f"{method} {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {a.key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
    out = b""
    while chunk := s.recv(1 << 16):
        out += chunk
    s.close()
    head, _, rest = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest.decode(errors="replace")


model = a.model
if model is None:
    status, text = request("GET", "/models")
    model = json.loads(text[text.index("{"):text.rindex("}") + 1])["data"][0]["id"]
rng = random.Random(a.seed)
prompts = [[rng.randrange(a.vocab) for _ in range(a.prompt_len)] for _ in range(a.requests)]
lengths = [rng.randint(a.min_tokens or a.max_tokens, a.max_tokens) for _ in range(a.requests)]
lock = threading.Lock()
next_req = [0]
results = []  # (ttft, tpot, tokens)
errors = []


def stream_one(prompt, max_tokens):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    s = socket.create_connection((host, port), timeout=600)
    s.sendall((f"POST {prefix}/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {a.key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    buf, first, tokens, done, seen = b"", None, 0, False, b""
    while not done:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
        seen += chunk[:200] if len(seen) < 400 else b""
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    done = True
                    break
                msg = json.loads(data)
                if msg.get("usage"):
                    tokens = msg["usage"]["completion_tokens"]
                elif msg.get("choices") and first is None:
                    first = time.perf_counter()
    s.close()
    end = time.perf_counter()
    if not done or first is None:
        raise RuntimeError(f"stream ended without [DONE]: {seen[:400]!r}")
    return first - t0, (end - first) / max(tokens - 1, 1), tokens


def client():
    while True:
        with lock:
            i = next_req[0]
            if i >= a.requests:
                return
            next_req[0] += 1
        try:
            r = stream_one(prompts[i], lengths[i])
            with lock:
                results.append((*r, i))
        except Exception as e:  # noqa: BLE001 (counted and reported)
            with lock:
                errors.append(repr(e))


stream_one(prompts[0][:16], a.max_tokens)  # warm-up
t0 = time.perf_counter()
threads = [threading.Thread(target=client) for _ in range(a.clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.perf_counter() - t0
tokens = sum(r[2] for r in results)
ttft = sorted(r[0] for r in results)
report = {
    "clients": a.clients, "requests": len(results), "errors": len(errors), "prompt_len": a.prompt_len,
    "max_tokens": a.max_tokens, "seconds": wall, "output_tok_s": tokens / wall,
    "ttft_median_ms": 1e3 * statistics.median(ttft) if ttft else None,
    "ttft_p90_ms": 1e3 * ttft[int(0.9 * (len(ttft) - 1))] if ttft else None,
    # the first requests all arrive at once (a burst of clients x prompt tokens to prefill)
    "ttft_median_after_burst_ms": 1e3 * statistics.median(r[0] for r in results if r[3] >= a.clients)
    if len(results) > a.clients else None,
    "tpot_median_ms": 1e3 * statistics.median(r[1] for r in results) if results else None,
}
if a.json:
    print(json.dumps(report))
else:
    print(f"{report['requests']} requests ({report['errors']} errors) from {a.clients} clients in {wall:.2f} s: "
          f"{report['output_tok_s']:.1f} output tok/s; TTFT median {report['ttft_median_ms']:.1f} ms, "
          f"p90 {report['ttft_p90_ms']:.1f} ms (median after the first {a.clients} requests: "
          f"{report['ttft_median_after_burst_ms'] or 0:.1f} ms); TPOT median {report['tpot_median_ms']:.2f} ms")
if errors:
    print("first errors:", errors[:3])
    raise SystemExit(1)
