# ncu_sum.py CSV: summarises an `ncu --csv --metrics gpu__time_duration.sum` run (see gpu-decode-check.sh NCU=1):
# GPU time and launches per kernel name, largest first. ncu reports the metric in ns.
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; ki = head.index("Kernel Name"); vi = head.index("Metric Value"); ui = head.index("Metric Unit")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[1:]:
    try: v = float(r[vi].replace(",", ""))
    except ValueError: continue
    scale = {"usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(r[ui], 1e-3)  # else ns
    name = r[ki].split("(")[0][:60]; tot[name] += v * scale; cnt[name] += 1
all_t = sum(tot.values())
print(f"total {all_t:.1f} us over {sum(cnt.values())} launches")
for n, t in sorted(tot.items(), key=lambda x: -x[1])[:30]:
    print(f"{t:10.1f} us {100*t/all_t:5.1f}% {cnt[n]:6d} x {t/cnt[n]:8.2f}  {n}")
