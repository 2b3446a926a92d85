"""Issue 19's parity figure and table from a `benchmark.sh parity` run.

    python docs/plot_parity.py results/parity --out docs/results/parity

Reads our runs (DIR/runs, TensorBoard; or DIR/cleanmarl/*.csv) and BenchMARL's
(DIR/parity/ or DIR/benchmarl/benchmarl_<task>_<seed>.csv, written by docs/parity_benchmarl.py),
one arm per exp name (NAV_ARMS, SMAX_ARMS: no flags, the full-batch arm, the GRU, ...), and per task:
  curves     each seed's training return (cleanmarl `charts/episodic_return`, BenchMARL
             `collection/reward/episode_reward_mean`: the same per-agent-mean episode reward on
             VMAS) interpolated onto a common grid of env steps between the latest first and the
             earliest last logged step of all runs; mean and two-sided 95 % Student-t interval;
  final      per seed, the mean over the last 10 % of the grid, then mean and interval;
  to 90 %    per seed, the first grid step at which the curve reaches 90 % of the peer's final
             mean (BenchMARL's), mean over the seeds that reach it;
  at least   whether an arm's mean curve is >= the peer's at every grid point past 0.5M steps (the
             issue's criterion), and at how many of them it is; and the same on the curves' means
             over windows of 100k steps past 0.5M;
  SPS        steps per second (ours: the last `charts/SPS`; BenchMARL: frames / wall time).
SMAX maps have no peer run here (docs/parity.md says why): their rows give our training win rate
and greedy evaluation win rates. Writes results.md, results.json, one PNG per task, and every
curve it used as CSV (cleanmarl/, benchmarl/) into --out, so `--out`'s folder re-plots on its own.
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
WINDOW = 100_000


def slug(env_id):
    """File-name stem of an env id: `vmas:navigation,n_agents=3` -> `vmas_navigation`."""
    return env_id.split(",")[0].replace(":", "_")


def peer_runs(folder, task):
    """BenchMARL's runs: DIR/parity/ (a `benchmark.sh parity` run) or DIR/benchmarl/ (what --out keeps)."""
    runs = []
    for sub in ("parity", "benchmarl"):
        for path in sorted(glob.glob(os.path.join(folder, sub, f"benchmarl_{task}_*.csv"))):
            rows = list(csv.DictReader(open(path)))
            runs.append({"steps": np.array([float(r["frames"]) for r in rows]), "rows": rows, "path": path,
                         "values": np.array([float(r["episode_reward_mean"]) for r in rows]),
                         "sps": float(rows[-1]["fps"]), "seed": int(path.rsplit("_", 1)[1][:-4])})
    return list({r["seed"]: r for r in runs}.values())


def our_runs(folder, env_id, tag, exp):
    """Our runs of one arm (exp name): TensorBoard runs under DIR/runs, then, for seeds not found
    there, the curves under DIR/cleanmarl/ that --out writes (so a committed folder re-plots)."""
    out = {}
    for run_dir in sorted(glob.glob(os.path.join(folder, "runs", "*"))):
        parsed = parse_run_name(os.path.basename(run_dir))
        if parsed is None or parsed[:2] != (env_id, exp):
            continue
        scalars = read_scalars(run_dir)
        if tag not in scalars:
            continue
        evals = scalars.get("eval/win_rate" if tag == "charts/win_rate" else "eval/episodic_return")
        out[parsed[2]] = {"steps": scalars[tag][0], "values": scalars[tag][1], "seed": parsed[2],
                          "sps": float(scalars["charts/SPS"][1][-1]) if "charts/SPS" in scalars else float("nan"),
                          "eval_steps": [] if evals is None else [float(v) for v in evals[0]],
                          "eval": [] if evals is None else [float(v) for v in evals[1]]}
    for path in sorted(glob.glob(os.path.join(folder, "cleanmarl", f"{slug(env_id)}__{exp}__*.csv"))):
        seed = int(path.rsplit("__", 1)[1][:-4])
        if seed in out:
            continue
        rows = list(csv.DictReader(open(path)))
        evals = [r for r in rows if r["eval_step"]]
        sps = rows[0].get("sps") or "nan"
        out[seed] = {"steps": np.array([float(r["step"]) for r in rows if r[tag]]), "seed": seed, "sps": float(sps),
                     "values": np.array([float(r[tag]) for r in rows if r[tag]]),
                     "eval_steps": [float(r["eval_step"]) for r in evals], "eval": [float(r["eval"]) for r in evals]}
    return [out[seed] for seed in sorted(out)]


def keep(out, env_id, tag, exp, runs):
    """Write one arm's curves as DIR/cleanmarl/<env>__<exp>__<seed>.csv: step, the tag, the
    greedy evaluations (eval_step, eval) in the first rows, the run's SPS in the first row; values
    written exactly (repr), so the folder re-plots to the same numbers."""
    os.makedirs(os.path.join(out, "cleanmarl"), exist_ok=True)
    for r in runs:
        with open(os.path.join(out, "cleanmarl", f"{slug(env_id)}__{exp}__{r['seed']}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", tag, "eval_step", "eval", "sps"])
            for i, (step, value) in enumerate(zip(r["steps"], r["values"])):
                ev = (f"{r['eval_steps'][i]:.0f}", repr(float(r["eval"][i]))) if i < len(r["eval"]) else ("", "")
                w.writerow([f"{step:.0f}", repr(float(value)), *ev, f"{r['sps']:.0f}" if i == 0 and r["sps"] == r["sps"] else ""])


def keep_peer(out, runs):
    os.makedirs(os.path.join(out, "benchmarl"), exist_ok=True)
    for r in runs:
        target = os.path.join(out, "benchmarl", os.path.basename(r["path"]))
        if os.path.abspath(target) != os.path.abspath(r["path"]):
            with open(target, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(r["rows"][0]))
                w.writeheader(), w.writerows(r["rows"])


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


NAV_ID = "vmas:navigation,n_agents=3,shared_rew=False"
NAV_ARMS = (("mappo_continuous", "cleanmarl mappo_continuous.py, no flags (Table V's VMAS navigation row, 4 minibatches)"),
            ("mappo_continuous_mb1", "cleanmarl, the same with --num-minibatches 1 (the full batch)"))
SMAX_ARMS = (("mappo", "cleanmarl mappo.py, no flags (Table V's SMAC row, 4 minibatches)"),
             ("mappo_gru", "cleanmarl rmappo.py (GRU)"),
             ("mappo_mb1", "cleanmarl, --num-minibatches 1 (the full batch)"),
             ("mappo_gru_mb1", "cleanmarl rmappo.py --num-minibatches 1"),
             ("mappo_jaxmarl_lr", "cleanmarl, JaxMARL's lr 2e-3, 4 epochs x 4 minibatches"))


def sps_text(sps):
    return f"{sps:.0f}" if np.isfinite(sps) else "not recorded"


def arm_label(label, curves):
    return f"{label} ({len(curves)} seeds)"


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
    tag = "charts/episodic_return"
    found = [(exp, label, runs) for exp, label in NAV_ARMS if (runs := our_runs(args.folder, NAV_ID, tag, exp))]
    peer = peer_runs(args.folder, "navigation")
    if found:
        everyone = peer + [r for _, _, runs in found for r in runs]
        grid = np.linspace(max(r["steps"][0] for r in everyone), min(r["steps"][-1] for r in everyone), 100)
        past = grid > PAST
        fig, ax = plt.subplots(figsize=(6, 4))
        entry, peer_final, criteria = {}, None, []
        if peer:
            pc = on_grid(peer, grid)
            peer_final = summary(pc, grid, [r["sps"] for r in peer])["final"]
            entry["BenchMARL MAPPO (its defaults)"] = summary(pc, grid, [r["sps"] for r in peer], peer_final)
            keep_peer(args.out, peer)
            mean, low, high = mean_ci(pc)
            ax.plot(grid, mean, label=arm_label("BenchMARL", pc), color="k")
            ax.fill_between(grid, low, high, alpha=0.2, color="k")
        for exp, label, runs in found:
            curves = on_grid(runs, grid)
            row = entry[label] = summary(curves, grid, [r["sps"] for r in runs], peer_final)
            if peer:
                ahead = curves.mean(0)[past] >= pc.mean(0)[past]
                row["criterion"] = {"grid_points_past_0.5M": int(past.sum()), "ours_at_least_peer": int(ahead.sum()),
                                    "met": bool(past.any() and ahead.all())}
                # the same on 100k-step windows: one batch's mean episode reward moves by a few hundredths
                edges = np.arange(PAST, grid[-1] + 1, WINDOW)
                gaps = [float(curves.mean(0)[w].mean() - pc.mean(0)[w].mean())
                        for lo in edges if (w := (grid > lo) & (grid <= lo + WINDOW)).any()]
                row["criterion"]["window_mean_minus_peer"] = [round(g, 4) for g in gaps]
                row["criterion"]["windows_at_least_peer"] = sum(g >= 0 for g in gaps)
                criteria.append((label, row["criterion"]))
            keep(args.out, NAV_ID, tag, exp, runs)
            mean, low, high = mean_ci(curves)
            ax.plot(grid, mean, label=arm_label(label.replace("cleanmarl ", ""), curves))
            if len(curves) > 1:
                ax.fill_between(grid, low, high, alpha=0.2)
        ax.set_xlabel("env steps (frames)"), ax.set_ylabel("training episode reward"), ax.legend(fontsize="x-small")
        ax.set_title("VMAS navigation (3 agents, BenchMARL's task settings)")
        fig.tight_layout(), fig.savefig(os.path.join(args.out, "parity_navigation.png"), dpi=100)
        results["vmas_navigation"] = entry
        lines += ["## VMAS navigation, BenchMARL's task settings", "",
                  f"Grid {grid[0]:.0f}-{grid[-1]:.0f} steps; final = mean of the last 10 % of it, 95 % t-interval over seeds.", "",
                  "| implementation | seeds | final | 95 % CI | steps to 90 % of BenchMARL's final | SPS |", "|---|---|---|---|---|---|"]
        for name, row in entry.items():
            to90 = "-"
            if "seeds_reaching_it" in row:
                steps = row["steps_to_90pct_of_peer_final"]
                to90 = f"{steps:.0f} ({row['seeds_reaching_it']} seeds)" if steps else "not reached"
            ci = row["final_ci"]
            lines.append(f"| {name} | {row['seeds']} | {row['final']:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | {to90} | {sps_text(row['sps'])} |")
        for label, c in criteria:
            lines += ["", f"{label}: mean curve >= BenchMARL's at {c['ours_at_least_peer']} of {c['grid_points_past_0.5M']} "
                          f"grid points past 0.5M steps, criterion {'met' if c['met'] else 'NOT met'}; in "
                          f"{c['windows_at_least_peer']} of {len(c['window_mean_minus_peer'])} windows of 100k steps past 0.5M "
                          f"(ours minus BenchMARL per window: {', '.join(f'{g:+.3f}' for g in c['window_mean_minus_peer'])})."]
        lines += ["", "![navigation](parity_navigation.png)", ""]
    tag = "charts/win_rate"
    for game in ("2s3z", "3s5z"):
        env_id = f"smax:{game}"
        found = [(exp, label, runs) for exp, label in SMAX_ARMS if (runs := our_runs(args.folder, env_id, tag, exp))]
        if not found:
            continue
        everyone = [r for _, _, runs in found for r in runs]
        grid = np.linspace(max(r["steps"][0] for r in everyone), min(r["steps"][-1] for r in everyone), 100)
        fig, ax = plt.subplots(figsize=(6, 4))
        lines += [f"## SMAX {game}", "", f"Training win rate, final = mean of the last 10 % of {grid[0]:.0f}-{grid[-1]:.0f} "
                  "steps, 95 % t-interval over seeds; greedy evaluation win rates at the end, per seed.", "",
                  "| implementation | seeds | final | 95 % CI | greedy at the end | SPS |", "|---|---|---|---|---|---|"]
        for exp, label, runs in found:
            curves = on_grid(runs, grid)
            row = summary(curves, grid, [r["sps"] for r in runs])
            row["eval_win_rate_at_the_end"] = [round(r["eval"][-1], 3) for r in runs if r["eval"]]
            results[f"smax_{game}__{exp}"] = row
            keep(args.out, env_id, tag, exp, runs)
            mean, low, high = mean_ci(curves)
            ax.plot(grid, mean, label=arm_label(label.replace("cleanmarl ", ""), curves))
            if len(curves) > 1:
                ax.fill_between(grid, low, high, alpha=0.2)
            ci = row["final_ci"]
            lines.append(f"| {label} | {row['seeds']} | {row['final']:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | "
                         f"{row['eval_win_rate_at_the_end']} | {sps_text(row['sps'])} |")
        ax.set_xlabel("env steps"), ax.set_ylabel("training win rate"), ax.set_title(f"SMAX {game}"), ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize="x-small")
        fig.tight_layout(), fig.savefig(os.path.join(args.out, f"parity_smax_{game}.png"), dpi=100)
        lines += ["", f"![smax {game}](parity_smax_{game}.png)", ""]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
