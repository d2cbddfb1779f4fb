#!/usr/bin/env python3
# hf-merge.py PREFIX ROUNDS (used by scripts/bench.sh and scripts/bench-device.sh): pools PREFIX.round{1..ROUNDS}.json into PREFIX.json (+ .md).
import json, statistics, sys
prefix, rounds = sys.argv[1], int(sys.argv[2])
merged = {}
for k in range(1, rounds + 1):
    for r in json.load(open(f"{prefix}.round{k}.json"))["results"]:
        m = merged.setdefault(r["command"], {"command": r["command"], "times": [], "user_s": [], "system_s": []})
        m["times"] += r["times"]
        m["user_s"].append(r["user"])
        m["system_s"].append(r["system"])
rows = []
for m in merged.values():
    t = m["times"]
    m.update(mean=statistics.mean(t), stddev=statistics.stdev(t) if len(t) > 1 else 0.0,
             median=statistics.median(t), min=min(t), max=max(t),
             user=statistics.mean(m.pop("user_s")), system=statistics.mean(m.pop("system_s")))
    rows.append(m)
json.dump({"results": rows, "rounds": rounds}, open(f"{prefix}.json", "w"), indent=1)
with open(f"{prefix}.md", "w") as f:
    f.write("| Command | Mean [s] | Median [s] | Min [s] | Max [s] | User [s] | System [s] | Runs |\n")
    f.write("|:---|---:|---:|---:|---:|---:|---:|---:|\n")
    for m in rows:
        f.write(f'| `{m["command"]}` | {m["mean"]:.3f} ± {m["stddev"]:.3f} | {m["median"]:.3f} | {m["min"]:.3f} '
                f'| {m["max"]:.3f} | {m["user"]:.3f} | {m["system"]:.3f} | {len(m["times"])} |\n')
print(open(f"{prefix}.md").read())
