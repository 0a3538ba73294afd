"""llama-bench-style pp/tg speeds of llama.cpp (through llama-cpp-python) on the CPU, to compare with
`kestrel bench` on the same machine. Same conventions: pp = one batch of -p tokens into an empty
context, tg = -n single-token steps from an empty context, repeated -r times after a warm-up.

    python3 scripts/llama_cpp_bench.py MODEL.gguf -p 64 -n 32 -r 3 -t 2
"""
import argparse
import statistics
import time

from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", type=int, default=2)
    a = ap.parse_args()
    llm = Llama(a.model, n_ctx=max(a.p, a.n) + 8, n_threads=a.t, n_threads_batch=a.t, n_batch=512, verbose=False)
    tokens = [(i * 2654435761 >> 7) % 10000 for i in range(max(a.p, a.n))]

    def pp():
        llm.reset()
        t = time.perf_counter()
        llm.eval(tokens[: a.p])
        return a.p / (time.perf_counter() - t)

    def tg():
        llm.reset()
        t = time.perf_counter()
        for i in range(a.n):
            llm.eval([tokens[i]])
        return a.n / (time.perf_counter() - t)

    for name, f in ((f"pp{a.p}", pp), (f"tg{a.n}", tg)):
        f()
        xs = [f() for _ in range(a.r)]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"| llama.cpp (llama-cpp-python) | {a.t} threads | {name} | {statistics.mean(xs):.2f} ± {sd:.2f} |")


if __name__ == "__main__":
    main()
