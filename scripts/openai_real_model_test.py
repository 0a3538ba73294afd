#!/usr/bin/env python3
"""The official `openai` client against `kestrel serve` on the real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M
GGUF, CPU): answers that mean something, at temperature 0.

Usage: openai_real_model_test.py BASE_URL MODEL
Run by crates/kestrel-cli/tests/cli/serve.rs. Checks: arithmetic in chat (whole = streamed); a tool call
for each tool_choice (auto: this model writes the call's JSON without <tool_call> tags, which the server
takes as a call since it names an offered tool; required; a named function), its arguments valid JSON
naming the city, streamed argument by argument with the same result; the tool's result sent back; a code
completion.
"""
import json
import sys

from openai import OpenAI

base, model = sys.argv[1:3]
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        sys.exit(f"openai_real_model_test: FAILED: {what}")


def chat(messages, **kw):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **kw)


# chat: whole and streamed agree, and the answer is right
q = [{"role": "user", "content": "What is 17 + 25? Reply with the number only."}]
whole = chat(q, max_tokens=10)
check(whole.choices[0].message.content.strip() == "42", f"17 + 25: {whole.choices[0].message}")
check(whole.choices[0].finish_reason == "stop", f"finish {whole.choices[0].finish_reason}")
streamed = "".join(c.choices[0].delta.content or "" for c in chat(q, max_tokens=10, stream=True) if c.choices)
check(streamed == whole.choices[0].message.content, f"streamed {streamed!r}")

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
                   "required": ["city"]}}}]
ask = [{"role": "user", "content": "What is the weather in Paris right now?"}]
named = {"type": "function", "function": {"name": "get_weather"}}
for choice in ("auto", "required", named):
    r = chat(ask, tools=tools, tool_choice=choice, max_tokens=60)
    c = r.choices[0]
    check(c.finish_reason == "tool_calls" and c.message.tool_calls, f"tool_choice={choice}: {c}")
    call = c.message.tool_calls[0]
    check(call.type == "function" and call.function.name == "get_weather" and call.id, f"call {call}")
    args = json.loads(call.function.arguments)
    check("paris" in str(args.get("city", "")).lower(), f"tool_choice={choice}: arguments {args}")

    # streamed: the call's id and name first, then its arguments in pieces adding up to the same
    deltas = [d for ch in chat(ask, tools=tools, tool_choice=choice, max_tokens=60, stream=True)
              for cc in ch.choices for d in (cc.delta.tool_calls or [])]
    check(deltas and (deltas[0].id or "").startswith("call_"), f"first delta {deltas[:1]}")
    check(deltas[0].function.name == "get_weather" and all(d.index == 0 for d in deltas), f"deltas {deltas}")
    check(all(d.function.name is None and d.id is None for d in deltas[1:]), f"later deltas {deltas}")
    joined = "".join(d.function.arguments or "" for d in deltas)
    check(joined == call.function.arguments, f"streamed arguments {joined!r} vs {call.function.arguments!r}")
    check(len(deltas) > 1, f"the arguments arrived whole, not as written: {deltas}")

# the call's result sent back: accepted, rendered (the prompt grows by the turn and the result)
back = ask + [
    {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function",
     "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})},
]
second = chat(back, tools=tools, max_tokens=40)
check(second.usage.prompt_tokens > r.usage.prompt_tokens + 20, f"tool result turn: {second.usage} vs {r.usage}")

# completions: code
comp = client.completions.create(model=model, prompt="def fibonacci(n):", max_tokens=40, temperature=0)
check("return" in comp.choices[0].text, f"completion {comp.choices[0].text!r}")

print("all checks passed")
