#!/usr/bin/env python3
"""The official `openai` client against a running `kestrel serve` (issue 6's client checks).

Usage: openai_client_test.py BASE_URL API_KEY MODEL
Exits non-zero with a message on the first check that fails. Run by crates/kestrel-cli/tests/cli/serve.rs
on the tiny random-weight model: the answers are gibberish, so the checks compare the server with itself
(streamed against whole at temperature 0, 64 concurrent streams against their one-at-a-time answers), and
the shapes and errors against OpenAI's.
"""
import json
import socket
import sys
import threading
import time
import urllib.parse

import openai
from openai import OpenAI

base, key, model = sys.argv[1:4]
client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)


def check(cond, what):
    if not cond:
        sys.exit(f"openai_client_test: FAILED: {what}")


def chat(messages, **kw):
    return client.chat.completions.create(model=model, messages=messages, **kw)


def streamed_chat(messages, **kw):
    """(reasoning, content, finish_reason, usage) put together from a stream."""
    reasoning, content, finish, usage = "", "", None, None
    for chunk in chat(messages, stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            d = c.delta
            content += d.content or ""
            reasoning += getattr(d, "reasoning_content", None) or ""
            if c.finish_reason is not None:
                check(finish is None, "one finish_reason per stream")
                finish = c.finish_reason
    return reasoning, content, finish, usage


# models
ids = [m.id for m in client.models.list()]
check(ids == [model], f"models.list() gave {ids}")
check(client.models.retrieve(model).id == model, "models.retrieve()")

# chat, whole and streamed, thinking on and off
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
for thinking in (None, True, False):
    extra = {} if thinking is None else {"chat_template_kwargs": {"enable_thinking": thinking}}
    kw = dict(temperature=0, max_tokens=12, extra_body={"ignore_eos": True, **extra})
    whole = chat(msgs, **kw)
    m = whole.choices[0].message
    check(m.role == "assistant" and isinstance(m.content, str), f"message {m}")
    check(whole.choices[0].finish_reason == "length", f"finish_reason {whole.choices[0].finish_reason}")
    u = whole.usage
    check(u.completion_tokens == 12 and u.total_tokens == u.prompt_tokens + 12, f"usage {u}")
    r, c, f, su = streamed_chat(msgs, **kw)
    check((r, c) == (getattr(m, "reasoning_content", None) or "", m.content), f"stream {r!r} {c!r} vs {m}")
    check(f == "length" and su is not None and su.completion_tokens == 12, f"stream end {f} {su}")

# tools: offered to the model (rendered by its template), and a call's result sent back. The tiny
# model answers gibberish, so its replies are checked for shape; parsing <tool_call> output into
# tool_calls is tested in the server's unit tests.
tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
first = chat(msgs, tools=tools, temperature=0, max_tokens=8)
check(first.choices[0].finish_reason in ("stop", "length", "tool_calls"), f"with tools: {first}")
round_trip = msgs + [
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
]
second = chat(round_trip, tools=tools, temperature=0, max_tokens=8)
check(second.choices[0].message.role == "assistant" and second.usage.prompt_tokens > first.usage.prompt_tokens,
      f"tool result round trip: {second}")

# logprobs
lp = chat(msgs, temperature=0, max_tokens=5, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
content = lp.choices[0].logprobs.content
check(len(content) == 5 and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in content), f"logprobs: {content}")
check(all(e.logprob == e.top_logprobs[0].logprob for e in content), "greedy tokens are the most likely")
clp = client.completions.create(model=model, prompt="Once", max_tokens=4, logprobs=1, temperature=0,
                                extra_body={"ignore_eos": True}).choices[0].logprobs
check(len(clp.tokens) == 4 and len(clp.token_logprobs) == 4, f"completion logprobs: {clp}")

# n choices
many = chat(msgs, n=3, temperature=1.0, seed=3, max_tokens=6)
check([c.index for c in many.choices] == [0, 1, 2] and many.usage.completion_tokens <= 18, f"n=3: {many}")

# completions, whole and streamed
kw = dict(model=model, prompt="Once upon a time", max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
whole = client.completions.create(**kw)
text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
check(text == whole.choices[0].text and whole.usage.completion_tokens == 10, f"completion {text!r} vs {whole}")
ids_prompt = client.completions.create(model=model, prompt=[5, 6, 7, 8], max_tokens=3, temperature=0)
check(ids_prompt.usage.prompt_tokens == 4, f"token-id prompt usage {ids_prompt.usage}")

# errors
def raises(exc, param, **kw):
    try:
        chat(msgs, **kw)
    except exc as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(param is None or body.get("param") == param, f"{exc.__name__}: param {body} (want {param})")
        return
    sys.exit(f"openai_client_test: FAILED: no {exc.__name__} for {kw}")


raises(openai.BadRequestError, "temperature", temperature=5)
raises(openai.BadRequestError, "n", n=99)
raises(openai.BadRequestError, "max_tokens", max_tokens=-1)
raises(openai.BadRequestError, "frobnicate", extra_body={"frobnicate": 1})
raises(openai.BadRequestError, "tool_choice", tool_choice="required")  # no tools
raises(openai.BadRequestError, "tool_choice", tools=tools, tool_choice={"type": "function", "function": {"name": "f"}})
try:
    client.chat.completions.create(model="no-such-model", messages=msgs)
    sys.exit("openai_client_test: FAILED: no NotFoundError for an unknown model")
except openai.NotFoundError:
    pass
try:
    OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).models.list()
    sys.exit("openai_client_test: FAILED: no AuthenticationError for a wrong key")
except openai.AuthenticationError:
    pass

# load: 64 concurrent streaming clients, each stream complete and equal to its request's answer alone
prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(64)]
alone = [chat(p, temperature=0, max_tokens=8).choices[0].message for p in prompts]
results = [None] * 64


def client_thread(i):
    try:
        results[i] = streamed_chat(prompts[i], temperature=0, max_tokens=8)
    except Exception as e:  # noqa: BLE001 (reported below)
        results[i] = e


threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(64)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for i, (res, want) in enumerate(zip(results, alone)):
    check(isinstance(res, tuple), f"stream {i}: {res!r}")
    r, c, f, u = res
    check((r, c) == (getattr(want, "reasoning_content", None) or "", want.content), f"stream {i} differs from its answer alone")
    check(f in ("stop", "length") and u is not None, f"stream {i} ended with {f}, usage {u}")

# bad clients on raw sockets: one that sends its body slowly, one that leaves mid-stream
host, port = urllib.parse.urlparse(base).hostname, urllib.parse.urlparse(base).port


def raw(body, stream_bytes=None, pieces=1, pause=0.0):
    s = socket.create_connection((host, port), timeout=60)
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    s.sendall(head.encode())
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        s.sendall(data[i:i + step])
        time.sleep(pause)
    got = b""
    while stream_bytes is None or len(got) < stream_bytes:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got.decode(errors="replace")


slow = raw({"model": model, "messages": msgs, "max_tokens": 4}, pieces=4, pause=0.3)
check(slow.startswith("HTTP/1.1 200"), f"slow body: {slow[:200]}")
left = raw({"model": model, "messages": msgs, "max_tokens": 400, "stream": True, "ignore_eos": True},
           stream_bytes=200)
check(left.startswith("HTTP/1.1 200"), f"client leaving mid-stream: {left[:200]}")
ids = [m.id for m in client.models.list()]
check(ids == [model], "the server serves after the load and the bad clients")


def metric(name):
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    text = b""
    while chunk := s.recv(65536):
        text += chunk
    s.close()
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    sys.exit(f"openai_client_test: FAILED: no {name} in /metrics of {root}")


# the client that left mid-stream was aborted: no sequence left running, its KV blocks free again
deadline = time.time() + 10
while (metric("kestrel_num_requests_running") or metric("kestrel_kv_blocks_used")) and time.time() < deadline:
    time.sleep(0.1)
check(metric("kestrel_num_requests_running") == 0, "a sequence still runs after every client is done")
check(metric("kestrel_kv_blocks_used") == 0, "KV blocks still in use after every client is done")
again = chat(msgs, temperature=0, max_tokens=12, extra_body={"ignore_eos": True})
check(again.usage.completion_tokens == 12, "a request after the bad clients")
print("openai_client_test: all checks passed")
