"""A stand-in for `vla-forget adapt` in sweep tests: writes the run-folder layout (no model) in milliseconds.

Usage: ``python tests/fake_adapt.py [adapt] --method M [--updates N] [--save-every K] --out RUN [--resume] ...``.
Every call is appended to ``RUN/calls.jsonl``. A run whose folder name contains a
string listed in ``$FAKE_ADAPT_FAIL`` (comma-separated) exits 3 after its first
checkpoint; ``$FAKE_ADAPT_SLEEP`` seconds are slept before the run starts.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(argv):
    if argv[:1] == ["adapt"]:
        argv = argv[1:]
    opts, flags, i = {}, set(), 0
    while i < len(argv):
        a = argv[i]
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts.setdefault(a[2:], []).append(argv[i + 1])
            i += 2
        else:
            flags.add(a[2:])
            i += 1
    out = opts["out"][0]
    if os.path.exists(os.path.join(out, "run.json")) and "resume" not in flags:
        print(f"{out} already holds a run: pass --resume", file=sys.stderr)
        return 2
    time.sleep(float(os.environ.get("FAKE_ADAPT_SLEEP", "0")))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"opts": opts, "flags": sorted(flags)}) + "\n")
    name = os.path.basename(os.path.abspath(out))
    method, updates = opts["method"][0], int(opts.get("updates", ["2"])[0])
    every = int(opts.get("save-every", ["1"])[0])
    run = {"kind": "adapt", "method": method, "base": opts["base"][0], "task": opts["task"][0],
           "config": {k: v[0] if len(v) == 1 else v for k, v in opts.items() if k != "out"}, "vla_forget_version": "test"}
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump(run, f)
    fail = [s for s in os.environ.get("FAKE_ADAPT_FAIL", "").split(",") if s]
    for u in range(0, updates + 1, every):
        ck = os.path.join(out, "checkpoints", f"update-{u:06d}")
        if os.path.exists(os.path.join(ck, "meta.json")):
            continue
        os.makedirs(ck, exist_ok=True)
        with open(os.path.join(ck, "meta.json"), "w") as f:
            json.dump({"method": method, "update": u, "env_steps": 10 * u, "samples_seen": 4 * u, "wall_time_s": 0.0,
                       "hparams": run["config"], "base": run["base"], "task": run["task"], "run": name}, f)
        if u > 0 and any(s in name for s in fail):
            print("failing on purpose", file=sys.stderr)
            return 3
    print(f"done {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
