"""CORA Fig. 3 for cleanmarl: each algorithm's policy means on `diff:2agents`, over training, drawn
on the game's reward landscape (one panel per algorithm, one seed).

    python docs/fig3.py results/diff/runs --seed 1 --out docs/results/diff/fig3.png

Reads the runs `diff:2agents__{exp_name}__{seed}__{time}` under the given roots; the continuous
scripts log each agent's policy mean (first action dimension) as `charts/action_mean/agent{i}`
every update. The landscape is Eq. (25) for that seed, from the env itself; the means are drawn
clipped to the action box, as the env clips actions.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cleanmarl.envs import EnvError, make_env  # noqa: E402
from docs.plot_results import parse_run_name, read_scalars  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", help="directories holding run directories (searched recursively)")
    parser.add_argument("--seed", type=int, default=1, help="the seed whose runs to draw")
    parser.add_argument("--env-id", default="diff:2agents", help="a two-agent differential game")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    paths = {}
    for root in args.roots:
        for dirpath, dirnames, _ in os.walk(root):
            parsed = parse_run_name(os.path.basename(dirpath))
            if parsed and parsed[0] == args.env_id and parsed[2] == args.seed:
                paths[parsed[1]] = dirpath
                dirnames[:] = []
    if not paths:
        raise SystemExit(f"fig3.py: no {args.env_id} runs of seed {args.seed} under {', '.join(args.roots)}")
    try:
        env = make_env(args.env_id, 1, args.seed, action_type="continuous")
    except EnvError as e:
        raise SystemExit(f"fig3.py: {e}")
    if env.spec.n_agents != 2 or env.reward_of is None:
        raise SystemExit(f"fig3.py: {args.env_id} is not a two-agent differential game (the picture needs one)")
    lo, hi = env.spec.action_low, env.spec.action_high
    grid = torch.linspace(lo, hi, 201)
    x1, x2 = torch.meshgrid(grid, grid, indexing="xy")
    landscape = env.reward_of(None, torch.stack([x1, x2], -1).unsqueeze(-1)).numpy()  # [201, 201]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(paths))
    rows = -(-len(paths) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), squeeze=False)
    best = np.unravel_index(landscape.argmax(), landscape.shape)
    for ax, (algo, path) in zip(axes.flat, sorted(paths.items())):
        scalars = read_scalars(path)
        if "charts/action_mean/agent0" not in scalars:
            raise SystemExit(f"fig3.py: {path} has no charts/action_mean/agent0 (a run from before it was logged)")
        a1 = np.clip(scalars["charts/action_mean/agent0"][1], lo, hi)
        a2 = np.clip(scalars["charts/action_mean/agent1"][1], lo, hi)
        ax.imshow(landscape, extent=(lo, hi, lo, hi), origin="lower", cmap="viridis")
        ax.plot(a1, a2, color="white", lw=1.2)
        ax.plot(a1[0], a2[0], "o", color="white", ms=4)
        ax.plot(a1[-1], a2[-1], "x", color="red", ms=7, mew=2)
        ax.plot(grid[best[1]], grid[best[0]], "*", color="gold", ms=10)
        ax.set_title(algo, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    for ax in list(axes.flat)[len(paths):]:
        ax.axis("off")
    fig.suptitle(f"{args.env_id}, seed {args.seed}: policy means over training (o start, x end, * optimum)",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"{len(paths)} runs -> {args.out}")


if __name__ == "__main__":
    main()
