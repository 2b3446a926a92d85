"""Learning curves and result tables from the scripts' TensorBoard logs.

    python docs/plot_results.py results/matrix/runs --out docs/results/matrix
    python docs/plot_results.py runs --out /tmp/plots --grid 200 --final-frac 0.2

Reads every run directory `{env_id}__{exp_name}__{seed}__{time}` under the given roots, takes the
tag `charts/win_rate` where a run logs it and `charts/episodic_return` otherwise (plus the greedy
evaluation in `eval.json`, written with `--save-model`), groups runs by env id and algorithm
(exp_name) and aggregates over seeds:

  common grid   each seed's curve is linearly interpolated onto `--grid` evenly spaced steps
                between the latest first logged step and the earliest last logged step of the
                group's runs (no extrapolation beyond any run);
  mean and CI   mean over seeds and a two-sided 95% Student-t interval,
                mean +- t_{0.975, S-1} * sd / sqrt(S) (sd with S - 1 degrees of freedom);
                no interval with one seed;
  final         per seed, the mean of the curve over the last `--final-frac` of the grid points;
  AUC           per seed, the trapezoidal area under the curve divided by the step range: the
                curve's average over training, in return units (so runs of different lengths
                stay comparable); final and AUC then get the same t-interval over seeds;
  late gain     per seed, the curve's mean over the last fifth of the grid minus its mean over the
                fifth before: near 0 where the curve has flattened at this budget;
  eval          the greedy evaluation return (win rate) of eval.json, and where every run knows
                its env's optimum, eval / optimum per seed (seeded games differ per seed);
  paired        with `--paired ALGO`: for every other algorithm, the per-seed difference ALGO - it
                of final and AUC over the seeds both ran (seeded games draw the same game for
                both, so the pairing removes the game-to-game spread), with its t-interval;
  diagnostics   where runs log them (CORA's core/adv_corr, equal_split_frac, alloc_spread (in A_N's
                raw units) and alloc_spread_rel (alloc_spread / alloc_std, update by update: the
                spread across agents against the allocations' overall scale), violation_ratio;
                ILVF's influence/coupled_mean, uncoupled_mean, precision and recall), per seed
                the mean over the first quarter of the updates and over the rest, NaNs left out.

Writes into --out: one PNG per env id (algorithms overlaid, mean line and 95% band),
`results.md` (a table per env id and the figures), `results.json` (the numbers) and, with
`--paired`, `paired.json` (the paired differences).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

RETURN_TAG, WIN_TAG = "charts/episodic_return", "charts/win_rate"
REL_SPREAD = "core/alloc_spread_rel"  # derived: core/alloc_spread / core/alloc_std, update by update
DIAGNOSTIC_TAGS = ("core/adv_corr", "core/equal_split_frac", "core/alloc_spread", REL_SPREAD, "core/violation_ratio",
                   "influence/coupled_mean", "influence/uncoupled_mean", "influence/precision", "influence/recall")
RUN_NAME = re.compile(r"^(?P<env>.+)__(?P<exp>[^_].*?)__(?P<seed>\d+)__(?P<time>\d+)$")


@dataclass
class Run:
    env_id: str
    algo: str
    seed: int
    metric: str  # the tag the curve comes from
    steps: np.ndarray
    values: np.ndarray
    eval: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)  # tag -> values, for DIAGNOSTIC_TAGS


def parse_run_name(name: str):
    """`{env_id}__{exp_name}__{seed}__{time}` -> (env_id, exp_name, seed), or None."""
    match = RUN_NAME.match(name)
    if match is None:
        return None
    return match["env"], match["exp"], int(match["seed"])


def read_scalars(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar tags of a run's event files: tag -> (steps, values), sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = np.array([e.step for e in events], dtype=np.float64)
        values = np.array([e.value for e in events], dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        out[tag] = (steps[order], values[order])
    return out


def load_runs(roots: list[str]) -> list[Run]:
    """Every run directory under the roots (searched recursively) that logged a return."""
    runs = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            parsed = parse_run_name(os.path.basename(dirpath))
            if parsed is None or not any(f.startswith("events.out.tfevents") for f in filenames):
                continue
            dirnames[:] = []
            scalars = read_scalars(dirpath)
            metric = WIN_TAG if WIN_TAG in scalars else RETURN_TAG
            if metric not in scalars:
                continue
            evaluation = {}
            if "eval.json" in filenames:
                with open(os.path.join(dirpath, "eval.json")) as f:
                    evaluation = json.load(f)
            diagnostics = {tag: scalars[tag][1] for tag in DIAGNOSTIC_TAGS if tag in scalars}
            if "core/alloc_spread" in scalars and "core/alloc_std" in scalars:
                # the spread across agents is in A_N's raw units; over the allocations' std it compares across envs
                spread, std = scalars["core/alloc_spread"][1], scalars["core/alloc_std"][1]
                spread, std = spread[: len(std)], std[: len(spread)]  # both logged once per update
                with np.errstate(divide="ignore", invalid="ignore"):
                    diagnostics[REL_SPREAD] = np.where(std > 0, spread / std, np.nan)
            runs.append(Run(*parsed, metric, *scalars[metric], evaluation, diagnostics))
    return runs


def common_grid(runs: list[Run], points: int) -> np.ndarray:
    """`points` evenly spaced steps over the range every run covers."""
    lo = max(run.steps[0] for run in runs)
    hi = min(run.steps[-1] for run in runs)
    if hi <= lo:
        return np.array([lo])
    return np.linspace(lo, hi, points)


def interpolate(runs: list[Run], grid: np.ndarray) -> np.ndarray:
    """Curves [S, G]: each run linearly interpolated at the grid steps."""
    return np.stack([np.interp(grid, run.steps, run.values) for run in runs])


def mean_ci(samples: np.ndarray, confidence: float = 0.95):
    """Mean over axis 0 and the Student-t interval (lo, hi); NaN bounds with one sample."""
    samples = np.asarray(samples, dtype=np.float64)
    S = samples.shape[0]
    mean = samples.mean(axis=0)
    if S < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    half = stats.t.ppf(0.5 + confidence / 2, S - 1) * samples.std(axis=0, ddof=1) / math.sqrt(S)
    return mean, mean - half, mean + half


def auc(grid: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Per curve [S]: trapezoidal area over the grid divided by its step range (the average)."""
    if len(grid) < 2:
        return curves[:, 0]
    return np.trapezoid(curves, grid, axis=1) / (grid[-1] - grid[0])


def final(curves: np.ndarray, frac: float) -> np.ndarray:
    """Per curve [S]: the mean over the last `frac` of the grid points (at least one)."""
    k = max(1, math.ceil(frac * curves.shape[1] - 1e-9))  # no float round-up (0.1 * 100)
    return curves[:, -k:].mean(axis=1)


def late_gain(curves: np.ndarray) -> np.ndarray:
    """Per curve [S]: the mean over the last fifth of the grid points minus that over the fifth before."""
    k = max(1, curves.shape[1] // 5)
    return curves[:, -k:].mean(axis=1) - curves[:, -2 * k : -k].mean(axis=1)


def summarize(runs: list[Run], points: int = 100, final_frac: float = 0.1) -> dict:
    """{env_id: {algo: {...curve and table numbers...}}} over seeds."""
    groups: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        groups.setdefault(run.env_id, {}).setdefault(run.algo, []).append(run)
    out = {}
    for env_id, algos in sorted(groups.items()):
        out[env_id] = {}
        for algo, members in sorted(algos.items()):
            members.sort(key=lambda r: r.seed)
            grid = common_grid(members, points)
            longest = max(run.steps[-1] for run in members)
            if grid[-1] < 0.9 * longest:  # an unfinished or crashed seed cuts the common range
                print(f"warning: {env_id} {algo}: the seeds share steps up to {grid[-1]:.0f} of {longest:.0f}")
            curves = interpolate(members, grid)
            mean, lo, hi = mean_ci(curves)
            entry = {"metric": members[0].metric, "seeds": [r.seed for r in members],
                     "grid": grid.tolist(), "mean": mean.tolist(), "lo": lo.tolist(), "hi": hi.tolist()}
            for name, per_seed in (("final", final(curves, final_frac)), ("auc", auc(grid, curves)),
                                   ("late_gain", late_gain(curves))):
                m, l, h = mean_ci(per_seed[:, None])
                entry[name] = {"mean": float(m[0]), "lo": float(l[0]), "hi": float(h[0]), "per_seed": per_seed.tolist()}
            key = "eval_win_rate" if entry["metric"] == WIN_TAG else "eval_return_mean"
            evals = [r.eval[key] for r in members if key in r.eval]
            if evals:
                m, l, h = mean_ci(np.array(evals)[:, None])
                entry["eval"] = {"mean": float(m[0]), "lo": float(l[0]), "hi": float(h[0]), "n": len(evals)}
            optimal = [r.eval.get("optimal_return") for r in members if r.eval.get("optimal_return") is not None]
            if optimal:
                entry["optimal_return_mean"] = float(np.mean(optimal))
            if key == "eval_return_mean" and len(optimal) == len(members) and len(evals) == len(members):
                # seeded games (matrix, diff) draw a different game, and optimum, per seed
                m, l, h = mean_ci((np.array(evals) / np.array(optimal))[:, None])
                entry["eval_ratio"] = {"mean": float(m[0]), "lo": float(l[0]), "hi": float(h[0])}
            for tag in DIAGNOSTIC_TAGS:
                logged = [r.diagnostics[tag] for r in members if tag in r.diagnostics and not np.isnan(r.diagnostics[tag]).all()]
                if logged:  # early: the first quarter of the updates; late: the rest (all NaN: the env gave no truth)
                    windows = np.array([[np.nanmean(v[: max(1, len(v) // 4)]), np.nanmean(v[max(1, len(v) // 4):])]
                                        for v in logged])
                    entry[tag] = {}
                    for i, name in enumerate(("early", "late")):
                        m, l, h = mean_ci(windows[:, i : i + 1])
                        entry[tag][name] = {"mean": float(m[0]), "lo": float(l[0]), "hi": float(h[0])}
            out[env_id][algo] = entry
    return out


def paired(summary: dict, base: str) -> dict:
    """{env_id: {algo: {"final": ..., "auc": ..., "seeds": n}}}: base minus algo, seed by seed."""
    out = {}
    for env_id, algos in summary.items():
        if base not in algos:
            continue
        out[env_id] = {}
        ref = algos[base]
        for algo, a in algos.items():
            shared = sorted(set(ref["seeds"]) & set(a["seeds"]))
            if algo == base or not shared:
                continue
            entry = {"seeds": len(shared)}
            for name in ("final", "auc"):
                diff = np.array([ref[name]["per_seed"][ref["seeds"].index(s)] - a[name]["per_seed"][a["seeds"].index(s)]
                                 for s in shared])
                m, l, h = mean_ci(diff[:, None])
                entry[name] = {"mean": float(m[0]), "lo": float(l[0]), "hi": float(h[0])}
            out[env_id][algo] = entry
    return out


def fmt(cell: dict) -> str:
    if math.isnan(cell["lo"]):
        return f"{cell['mean']:.3g}"
    return f"{cell['mean']:.3g} [{cell['lo']:.3g}, {cell['hi']:.3g}]"


def slug(env_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", env_id).strip("_")


def markdown(summary: dict, final_frac: float) -> str:
    lines = ["Mean over seeds with a 95% Student-t confidence interval in brackets. final: the mean of the "
             f"last {final_frac:.0%} of the training curve; AUC: the curve's average over training "
             "(area / step range); late gain: the last fifth of the curve minus the fifth before (≈ 0: flat at "
             "this budget); eval: greedy evaluation after training (`eval.json`), also per seed as a "
             "share of that seed's optimum where the env knows it. Rows sorted by final.", ""]
    envs = list(summary)
    algos_all = sorted({algo for env in summary.values() for algo in env})
    lines.append("Final (training curve) by environment:")
    lines.append("")
    lines.append("| algorithm | " + " | ".join(f"`{e}`" for e in envs) + " |")
    lines.append("|---|" + "---|" * len(envs))
    for algo in algos_all:
        cells = [fmt(summary[e][algo]["final"]) if algo in summary[e] else "–" for e in envs]
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    lines.append("")
    for env_id, algos in summary.items():
        metric = "win rate" if next(iter(algos.values()))["metric"] == WIN_TAG else "episodic return"
        optimal = [a["optimal_return_mean"] for a in algos.values() if "optimal_return_mean" in a]
        lines.append(f"### `{env_id}` ({metric}" + (f"; optimum, mean over seeds: {optimal[0]:.3g}" if optimal else "") + ")")
        lines.append("")
        lines.append(f"![{env_id}]({slug(env_id)}.png)")
        lines.append("")
        lines.append("| algorithm | seeds | final | AUC | late gain | greedy eval | greedy eval / optimum |")
        lines.append("|---|---|---|---|---|---|---|")
        for algo, a in sorted(algos.items(), key=lambda kv: -kv[1]["final"]["mean"]):
            ev = fmt(a["eval"]) if "eval" in a else "–"
            ratio = fmt(a["eval_ratio"]) if "eval_ratio" in a else "–"
            lines.append(f"| {algo} | {len(a['seeds'])} | {fmt(a['final'])} | {fmt(a['auc'])} | {fmt(a['late_gain'])} | {ev} | {ratio} |")
        lines.append("")
        diagnosed = {algo: a for algo, a in algos.items() if any(tag in a for tag in DIAGNOSTIC_TAGS)}
        if diagnosed:
            lines.append("Credit diagnostics, mean over the first quarter of the updates (early) and the rest (late):")
            lines.append("")
            tags = [t for t in DIAGNOSTIC_TAGS if any(t in a for a in diagnosed.values())]  # the tags logged here
            lines.append("| algorithm | " + " | ".join(f"`{t}` {w}" for t in tags for w in ("early", "late")) + " |")
            lines.append("|---|" + "---|" * 2 * len(tags))
            for algo, a in sorted(diagnosed.items()):
                cells = [fmt(a[t][w]) if t in a else "–" for t in tags for w in ("early", "late")]
                lines.append(f"| {algo} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def paired_markdown(table: dict, base: str) -> str:
    lines = [f"## `{base}` against each algorithm, seed by seed", "",
             f"Mean over the shared seeds of ({base} − algorithm), 95% t-interval; an interval above 0 "
             f"is a win for {base}.", ""]
    for env_id, algos in table.items():
        lines += [f"### `{env_id}`", "", "| algorithm | seeds | Δ final | Δ AUC |", "|---|---|---|---|"]
        for algo, a in sorted(algos.items()):
            lines.append(f"| {algo} | {a['seeds']} | {fmt(a['final'])} | {fmt(a['auc'])} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = sorted({algo for env in summary.values() for algo in env})
    colors = {algo: plt.get_cmap("tab10")(i % 10) for i, algo in enumerate(algos)}  # same color everywhere
    paths = []
    for env_id, entries in summary.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        seeds = set()
        for algo, a in entries.items():
            grid, mean = np.array(a["grid"]), np.array(a["mean"])
            ax.plot(grid, mean, color=colors[algo], label=f"{algo} (n={len(a['seeds'])})", lw=1.6)
            if not np.isnan(a["lo"][0]):
                ax.fill_between(grid, a["lo"], a["hi"], color=colors[algo], alpha=0.2, lw=0)
            seeds.add(len(a["seeds"]))
        optimal = [a["optimal_return_mean"] for a in entries.values() if "optimal_return_mean" in a]
        if optimal and next(iter(entries.values()))["metric"] == RETURN_TAG:
            ax.axhline(optimal[0], color="gray", ls="--", lw=1, label="optimum (mean over seeds)")
        metric = "win rate" if next(iter(entries.values()))["metric"] == WIN_TAG else "episodic return"
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"training {metric}")
        ax.set_title(f"{env_id}: mean and 95% t-interval over seeds", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = os.path.join(out, f"{slug(env_id)}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="directories holding run directories (searched recursively)")
    parser.add_argument("--out", required=True, help="directory for the PNGs, results.md and results.json")
    parser.add_argument("--grid", type=int, default=100, help="points of the common step grid")
    parser.add_argument("--final-frac", type=float, default=0.1, help="share of the curve that 'final' averages")
    parser.add_argument("--paired", nargs="*", default=[], help="algorithms (exp names) to compare seed by seed with the others")
    args = parser.parse_args(argv)
    if args.grid < 2 or not 0 < args.final_frac <= 1:
        parser.error("--grid must be >= 2 and --final-frac in (0, 1]")
    runs = load_runs(args.roots)
    if not runs:
        raise SystemExit(f"plot_results.py: no runs with {RETURN_TAG} under {', '.join(args.roots)}")
    os.makedirs(args.out, exist_ok=True)
    summary = summarize(runs, args.grid, args.final_frac)
    plot(summary, args.out)
    text, tables = markdown(summary, args.final_frac), {}
    for base in args.paired:
        tables[base] = paired(summary, base)
        if not tables[base]:
            raise SystemExit(f"plot_results.py: --paired {base}: no such algorithm among the runs")
        text += "\n" + paired_markdown(tables[base], base)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    if tables:
        with open(os.path.join(args.out, "paired.json"), "w") as f:
            json.dump(tables, f)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f)
    print(f"{len(runs)} runs, {len(summary)} env ids -> {args.out}/results.md and PNGs")


if __name__ == "__main__":
    main()
