"""Issue 19's parity figure and table from a `benchmark.sh parity` run.

    python docs/plot_parity.py results/parity --out docs/results/parity

Reads our runs (DIR/runs, TensorBoard) and BenchMARL's (DIR/parity/benchmarl_<task>_<seed>.csv,
written by docs/parity_benchmarl.py) and, per task:
  curves     each seed's training return (cleanmarl `charts/episodic_return`, BenchMARL
             `collection/reward/episode_reward_mean`: the same per-agent-mean episode reward on
             VMAS) interpolated onto a common grid of env steps between the latest first and the
             earliest last logged step of all runs; mean and two-sided 95 % Student-t interval;
  final      per seed, the mean over the last 10 % of the grid, then mean and interval;
  to 90 %    per seed, the first grid step at which the curve reaches 90 % of the peer's final
             mean (BenchMARL's), mean over the seeds that reach it;
  at least   whether our mean curve is >= the peer's at every grid point past 0.5M steps (the
             issue's criterion), and the fraction of those points where it is;
  SPS        steps per second (ours: the last `charts/SPS`; BenchMARL: frames / wall time).
SMAX maps have no peer run here (docs/parity.md says why): their rows give our training win rate
and greedy evaluation win rates, for `mappo.py` with no flags and, where run, with `--recurrent`
(exp name mappo_gru), with JaxMARL's learning rate and minibatching (mappo_jaxmarl_lr) and with 4
minibatches (mappo_mb4), the last two by hand. Writes results.md, results.json and one PNG per task into --out.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_results import mean_ci, parse_run_name, read_scalars  # noqa: E402

PAST = 500_000  # the "every logged point past 0.5M frames"


def peer_runs(folder, task):
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "parity", f"benchmarl_{task}_*.csv"))):
        rows = list(csv.DictReader(open(path)))
        steps = np.array([float(r["frames"]) for r in rows])
        values = np.array([float(r["episode_reward_mean"]) for r in rows])
        runs.append({"steps": steps, "values": values, "sps": float(rows[-1]["fps"]), "seed": path.rsplit("_", 1)[1][:-4]})
    return runs


def our_runs(folder, env_id, tag, exp):
    out = []
    for run_dir in sorted(glob.glob(os.path.join(folder, "runs", "*"))):
        parsed = parse_run_name(os.path.basename(run_dir))
        if parsed is None or parsed[:2] != (env_id, exp):
            continue
        scalars = read_scalars(run_dir)
        if tag not in scalars:
            continue
        evals = scalars.get("eval/win_rate" if tag == "charts/win_rate" else "eval/episodic_return")
        out.append({"steps": scalars[tag][0], "values": scalars[tag][1], "seed": parsed[2],
                    "sps": float(scalars["charts/SPS"][1][-1]) if "charts/SPS" in scalars else float("nan"),
                    "eval": None if evals is None else [float(v) for v in evals[1]]})
    return out


def on_grid(runs, grid):
    return np.stack([np.interp(grid, r["steps"], r["values"]) for r in runs])


def summary(curves, grid, sps, peer_final=None):
    k = max(1, len(grid) // 10)
    finals = curves[:, -k:].mean(1)
    mean, low, high = mean_ci(finals)
    out = {"seeds": len(curves), "final": float(mean), "final_ci": [float(low), float(high)], "sps": float(np.mean(sps))}
    if peer_final is not None:
        target = 0.9 * peer_final
        reached = [grid[np.argmax(c >= target)] for c in curves if (c >= target).any()]
        out["steps_to_90pct_of_peer_final"] = float(np.mean(reached)) if reached else None
        out["seeds_reaching_it"] = len(reached)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    results, lines = {}, ["# Parity with the reference implementations (issue 19)", ""]
    nav_id = "vmas:navigation,n_agents=3,shared_rew=False"
    ours, peer = our_runs(args.folder, nav_id, "charts/episodic_return", "mappo_continuous"), peer_runs(args.folder, "navigation")
    # an extra arm, where run: our defaults plus --num-minibatches 4 --exp-name mappo_continuous_mb4
    extra = our_runs(args.folder, nav_id, "charts/episodic_return", "mappo_continuous_mb4")
    if ours:
        everyone = ours + peer + extra
        grid = np.linspace(max(r["steps"][0] for r in everyone), min(r["steps"][-1] for r in everyone), 100)
        fig, ax = plt.subplots(figsize=(6, 4))
        entry = {}
        peer_final = None
        if peer:
            pc = on_grid(peer, grid)
            peer_final = summary(pc, grid, [r["sps"] for r in peer])["final"]
            entry["BenchMARL MAPPO (its defaults)"] = summary(pc, grid, [r["sps"] for r in peer], peer_final)
        oc = on_grid(ours, grid)
        entry["cleanmarl mappo_continuous.py (no flags: CORA Table V, VMAS navigation)"] = summary(
            oc, grid, [r["sps"] for r in ours], peer_final)
        arms = [("cleanmarl", oc)]
        if extra:
            ec = on_grid(extra, grid)
            entry["cleanmarl, the same with --num-minibatches 4 (measured, not a default)"] = summary(
                ec, grid, [r["sps"] for r in extra], peer_final)
            arms.append(("cleanmarl --num-minibatches 4", ec))
        for label, curves in arms + ([("BenchMARL", pc)] if peer else []):
            mean, low, high = mean_ci(curves)
            ax.plot(grid, mean, label=f"{label} ({len(curves)} seeds)")
            if len(curves) > 1:
                ax.fill_between(grid, low, high, alpha=0.2)
        if peer:
            past = grid > PAST
            ahead = oc.mean(0)[past] >= pc.mean(0)[past]
            entry["criterion"] = {"grid_points_past_0.5M": int(past.sum()), "ours_at_least_peer": int(ahead.sum()),
                                  "met": bool(past.any() and ahead.all())}
            if extra:
                ahead = ec.mean(0)[past] >= pc.mean(0)[past]
                entry["criterion_num_minibatches_4"] = {"grid_points_past_0.5M": int(past.sum()),
                                                        "ours_at_least_peer": int(ahead.sum()), "met": bool(past.any() and ahead.all())}
        ax.set_xlabel("env steps (frames)"), ax.set_ylabel("training episode reward"), ax.legend()
        ax.set_title("VMAS navigation (3 agents, BenchMARL's task settings)")
        fig.tight_layout(), fig.savefig(os.path.join(args.out, "parity_navigation.png"), dpi=100)
        results["vmas_navigation"] = entry
        lines += ["## VMAS navigation, BenchMARL's task settings", "",
                  f"Grid {grid[0]:.0f}-{grid[-1]:.0f} steps; final = mean of the last 10 % of it, 95 % t-interval over seeds.", "",
                  "| implementation | seeds | final | 95 % CI | steps to 90 % of BenchMARL's final | SPS |", "|---|---|---|---|---|---|"]
        for name, row in entry.items():
            if name.startswith("criterion"):
                continue
            to90 = "-"
            if "seeds_reaching_it" in row:
                steps = row["steps_to_90pct_of_peer_final"]
                to90 = f"{steps:.0f} ({row['seeds_reaching_it']} seeds)" if steps else "not reached"
            ci = row["final_ci"]
            lines.append(f"| {name} | {row['seeds']} | {row['final']:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | {to90} | {row['sps']:.0f} |")
        for key, who in (("criterion", "Our mean curve (defaults)"), ("criterion_num_minibatches_4", "With --num-minibatches 4, it")):
            if key in entry:
                c = entry[key]
                lines += ["", f"{who} >= BenchMARL's at {c['ours_at_least_peer']} of {c['grid_points_past_0.5M']} grid "
                              f"points past 0.5M steps: criterion {'met' if c['met'] else 'NOT met'}."]
        lines += ["", "![navigation](parity_navigation.png)", ""]
    arms = (("mappo", "", "cleanmarl mappo.py, no flags"), ("mappo_gru", "_gru", "cleanmarl mappo.py --recurrent (GRU)"),
            ("mappo_jaxmarl_lr", "_jaxmarl_hp", "cleanmarl, JaxMARL's lr 2e-3, 4x4 minibatches"),
            ("mappo_mb4", "_mb4", "cleanmarl, --num-minibatches 4 (Table V's rates)"))
    for game in ("2s3z", "3s5z"):
        found = [(suffix, label, runs) for exp, suffix, label in arms
                 if (runs := our_runs(args.folder, f"smax:{game}", "charts/win_rate", exp))]
        if not found:
            continue
        everyone = [r for _, _, runs in found for r in runs]
        grid = np.linspace(max(r["steps"][0] for r in everyone), min(r["steps"][-1] for r in everyone), 100)
        fig, ax = plt.subplots(figsize=(6, 4))
        lines += [f"## SMAX {game}", "", f"Training win rate, final = mean of the last 10 % of {grid[0]:.0f}-{grid[-1]:.0f} "
                  "steps, 95 % t-interval over seeds; greedy evaluation win rates at the end, per seed.", "",
                  "| implementation | seeds | final | 95 % CI | greedy at the end | SPS |", "|---|---|---|---|---|---|"]
        for suffix, label, runs in found:
            curves = on_grid(runs, grid)
            row = summary(curves, grid, [r["sps"] for r in runs])
            row["eval_win_rate_at_the_end"] = [round(r["eval"][-1], 3) for r in runs if r["eval"]]
            results[f"smax_{game}{suffix}"] = row
            mean, low, high = mean_ci(curves)
            ax.plot(grid, mean, label=f"{label} ({len(curves)} seeds)")
            if len(curves) > 1:
                ax.fill_between(grid, low, high, alpha=0.2)
            ci = row["final_ci"]
            lines.append(f"| {label} | {row['seeds']} | {row['final']:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | "
                         f"{row['eval_win_rate_at_the_end']} | {row['sps']:.0f} |")
        ax.set_xlabel("env steps"), ax.set_ylabel("training win rate"), ax.set_title(f"SMAX {game}"), ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize="small")
        fig.tight_layout(), fig.savefig(os.path.join(args.out, f"parity_smax_{game}.png"), dpi=100)
        lines += ["", f"![smax {game}](parity_smax_{game}.png)", ""]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
