"""Two arms of two different batches, paired seed by seed, from their results.json files.

    python docs/compare_results.py docs/results/NEW/results.json:ilvf_ppo_learned \\
                                   docs/results/OLD/results.json:ilvf_ppo_learned_critic1e-3

`plot_results.py --paired` pairs arms inside one batch; this pairs an arm with one of another
batch (e.g. the same arm on another network, run a week earlier) where the raw runs of the older
batch are gone: it reads each arm's per-seed final and AUC that plot_results.py stored, and for
every env id both arms ran prints A - B over the seeds both ran, with the 95 % Student-t interval
of plot_results.py. Pairing by seed means the same env seeds on both sides; the runs' own
randomness still differs wherever the two arms' code does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_results import mean_ci  # noqa: E402


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_arm(spec: str) -> dict:
    """'path/results.json:ALGO' -> {env_id: that algo's entry}; exits 2 with one line if either is missing."""
    path, sep, algo = spec.rpartition(":")
    if not sep or not path:
        fail(f"'{spec}' is not PATH:ALGO (a plot_results.py results.json and an exp name in it)")
    if not os.path.isfile(path):
        fail(f"no file {path}; make it with python docs/plot_results.py RUNS --out DIR")
    with open(path) as f:
        summary = json.load(f)
    arm = {env_id: algos[algo] for env_id, algos in summary.items() if algo in algos}
    if not arm:
        names = sorted({a for algos in summary.values() for a in algos})
        fail(f"{path} has no algorithm '{algo}'; it has: {', '.join(names)}")
    return arm


def compare(a: dict, b: dict) -> dict:
    """{env_id: {"seeds": [...], "final": {mean, lo, hi, per_seed}, "auc": {...}}}: A - B seed by seed."""
    out = {}
    for env_id in sorted(set(a) & set(b)):
        shared = sorted(set(a[env_id]["seeds"]) & set(b[env_id]["seeds"]))
        if not shared:
            continue
        out[env_id] = {"seeds": shared}
        for name in ("final", "auc"):
            diff = np.array([a[env_id][name]["per_seed"][a[env_id]["seeds"].index(s)]
                             - b[env_id][name]["per_seed"][b[env_id]["seeds"].index(s)] for s in shared])
            m, lo, hi = mean_ci(diff[:, None])
            out[env_id][name] = {"mean": float(m[0]), "lo": float(lo[0]), "hi": float(hi[0]), "per_seed": diff.tolist()}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="PATH/results.json:ALGO, the minuend")
    parser.add_argument("b", help="PATH/results.json:ALGO, the subtrahend")
    args = parser.parse_args(argv)
    table = compare(load_arm(args.a), load_arm(args.b))
    if not table:
        fail("the two arms share no env id and seed")
    for env_id, row in table.items():
        cells = "  ".join(f"{name} {row[name]['mean']:+.4g} [{row[name]['lo']:.4g}, {row[name]['hi']:.4g}]"
                          for name in ("final", "auc"))
        print(f"{env_id}  A - B over seeds {','.join(map(str, row['seeds']))}:  {cells}")
    return table


if __name__ == "__main__":
    main()
