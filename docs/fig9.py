"""The CORA paper's Fig. 9: how well a sampled coalition set approximates the full core QP.

7 agents; 20 trials, each a random advantage function: for 512 states, every coalition's
advantage A_C and the grand advantage A_N drawn i.i.d. from N(0, 1). For each number m of
sampled coalitions, Eq. (24) is solved over m coalitions drawn uniformly (without replacement)
and over all 2^7 - 2 = 126, and compared:
  violation ratio  share of the 126 coalition constraints that the sampled allocation violates
                   with its own epsilon (sum_{i in C} A_i < A_C - eps);
  objective gap    |f_sampled - f_full| / |f_full| with f = eps + reg * sum_i (A_i - A_N / n)^2,
                   each problem's optimal value, averaged over states;
  compute time     seconds of `core_allocation` for the 512 states.
Writes docs/fig9.png and docs/fig9.md.  Run: python docs/fig9.py   (about a minute)
"""

import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cleanmarl.cora_mappo import all_coalitions, core_allocation  # noqa: E402

N_AGENTS, TRIALS, STATES, REG = 7, 20, 512, 1e-2
SIZES = [8, 16, 32, 48, 63, 96, 126]


def objective(alloc, eps, grand_adv):
    return eps + REG * ((alloc - grand_adv[:, None] / N_AGENTS) ** 2).sum(1)


def main():
    torch.set_num_threads(1)
    every = all_coalitions(N_AGENTS)
    gen = torch.Generator().manual_seed(0)
    rows = {m: {"violation": [], "gap": [], "time": []} for m in SIZES}
    for _ in range(TRIALS):
        adv = torch.randn(STATES, len(every), generator=gen, dtype=torch.float64)
        grand = torch.randn(STATES, generator=gen, dtype=torch.float64)
        full_alloc, full_eps = core_allocation(every, adv, grand, REG)
        f_full = objective(full_alloc, full_eps, grand)
        for m in SIZES:
            pick = torch.randperm(len(every), generator=gen)[:m]
            start = time.perf_counter()
            alloc, eps = core_allocation(every[pick], adv[:, pick], grand, REG)
            rows[m]["time"].append(time.perf_counter() - start)
            covered = alloc @ every.double().T
            rows[m]["violation"].append((covered < adv - eps[:, None] - 1e-9).double().mean().item())
            gap = (objective(alloc, eps, grand) - f_full).abs() / f_full.abs().clamp(min=1e-9)
            rows[m]["gap"].append(gap.mean().item())

    stats = {m: {k: (np.mean(v), 1.96 * np.std(v) / np.sqrt(len(v))) for k, v in r.items()} for m, r in rows.items()}
    lines = ["| sampled coalitions | violation ratio | objective gap | compute time (ms, 512 states) |", "|---|---|---|---|"]
    for m in SIZES:
        s = stats[m]
        lines.append(f"| {m} | {s['violation'][0]:.3f} ± {s['violation'][1]:.3f} | {s['gap'][0]:.4f} ± {s['gap'][1]:.4f} "
                     f"| {1e3 * s['time'][0]:.1f} ± {1e3 * s['time'][1]:.1f} |")
    table = "\n".join(lines)
    header = (f"# Fig. 9: sampled core allocation ({N_AGENTS} agents, {TRIALS} trials of {STATES} states with i.i.d. "
              f"N(0, 1) advantages, reg = {REG}; mean ± 95% CI; one CPU thread)\n\nMade by `python docs/fig9.py`.\n\n")
    with open(os.path.join(ROOT, "docs", "fig9.md"), "w") as f:
        f.write(header + table + "\n")
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(axes, ["violation", "gap", "time"], ["violation ratio", "objective gap", "compute time (ms)"]):
        scale = 1e3 if key == "time" else 1.0
        mean = np.array([stats[m][key][0] for m in SIZES]) * scale
        ci = np.array([stats[m][key][1] for m in SIZES]) * scale
        ax.plot(SIZES, mean, marker="o")
        ax.fill_between(SIZES, mean - ci, mean + ci, alpha=0.3)
        ax.set_xlabel("sampled coalitions (of 126)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Sampled core allocation, {N_AGENTS} agents, {TRIALS} trials")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "docs", "fig9.png"), dpi=120)


if __name__ == "__main__":
    main()
