"""BenchMARL's MAPPO on its home VMAS tasks, with BenchMARL's own defaults, for `benchmark.sh parity`.

Run with the Python that has BenchMARL (requirements-bench.txt):

    .venv-bench/bin/python docs/parity_benchmarl.py --task navigation --seed 1 --frames 2000000 --out DIR

BenchMARL's experiment, algorithm, task and model configurations are its shipped YAML defaults
(MAPPO, 64x64 tanh MLPs, 6000 frames per batch from 10 envs, 45 minibatch iterations of 400,
lr 5e-5); only the frame budget, the seed, one torch thread, and logging to CSV without
evaluation are set here. Writes DIR/benchmarl_<task>_<seed>.csv with one row per batch: frames
collected so far, the mean episode reward of the batch's finished episodes (BenchMARL's
`collection/reward/episode_reward_mean`: per-agent rewards averaged over agents, summed over the
episode, the same quantity as cleanmarl's `charts/episodic_return` on VMAS), and frames per second.
"""

import argparse
import csv
import glob
import os
import sys
import tempfile
import time

import torch

TASKS = ("navigation", "balance")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="navigation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, default=2_000_000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        from benchmarl.algorithms import MappoConfig
        from benchmarl.environments import VmasTask
        from benchmarl.experiment import Experiment, ExperimentConfig
        from benchmarl.models.mlp import MlpConfig
    except ImportError:
        sys.exit("error: BenchMARL is not installed here: python -m venv --system-site-packages .venv-bench && "
                 ".venv-bench/bin/pip install -r requirements-bench.txt")
    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="benchmarl_")
    config = ExperimentConfig.get_from_yaml()
    config.max_n_frames, config.evaluation, config.loggers = args.frames, False, ["csv"]
    config.save_folder, config.checkpoint_at_end, config.create_json = folder, False, False
    task = getattr(VmasTask, args.task.upper()).get_from_yaml()
    experiment = Experiment(task=task, algorithm_config=MappoConfig.get_from_yaml(),
                            model_config=MlpConfig.get_from_yaml(), critic_model_config=MlpConfig.get_from_yaml(),
                            seed=args.seed, config=config)
    start = time.time()
    experiment.run()
    fps = args.frames / (time.time() - start)

    def series(name):
        (path,) = glob.glob(os.path.join(folder, "*", "*", "scalars", f"{name}.csv"))
        return [float(row[1]) for row in csv.reader(open(path))]

    frames, rewards = series("counters_total_frames"), series("collection_reward_episode_reward_mean")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, f"benchmarl_{args.task}_{args.seed}.csv")
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frames", "episode_reward_mean", "fps"])
        for n, r in zip(frames, rewards):
            writer.writerow([int(n), r, round(fps)])
    print(f"wrote {out}: {len(frames)} batches, {fps:.0f} frames/s")


if __name__ == "__main__":
    main()
