"""The GPU check (issue 17): every script trains a few iterations with `--cuda` on each family that
lives in torch, twice with the same seed, and once on the CPU.

For each case it prints
- whether the two device runs gave the same training returns and the same greedy evaluation
  (they must: the scripts seed everything and ask cuDNN and cuBLAS for deterministic kernels);
- the device's SPS and the CPU's, and their ratio (same flags, same machine);
- host reads per env step of the rollout: the times a run reads a device value on the host
  (`.item()`, `bool(tensor)`, a copy to the CPU), counted by a dispatch mode in two more runs
  with the same batch, T steps x E envs and 2T x E/2 (their difference over T steps is the
  rollout's). Expected: 2, the env asking whether any episode ended and the script whether any
  was truncated; everything else happens once per update (logging; CORA's QP stops when it
  converges, so its reads differ a little between the two counted runs). Reads inside VMAS are
  its own and counted apart (≈ 38 a step on navigation). On the CPU every scalar read counts, as
  it would wait on a GPU;
- for CORA, the Monte-Carlo pass and the QP per update (`core/coalition_ms`, `core/qp_ms`, timed
  with the device synchronized), device and CPU.
It exits 1 when a run fails or repeats differently, 0 otherwise.

Usage: bash benchmark.sh gpu                     (= python docs/device_check.py)
       python docs/device_check.py --only 'cora_mappo.py .*vmas'    (cases matching a regex)
       python docs/device_check.py --device cpu  (the same check on the CPU, where no GPU is)
Without CUDA, `--device cuda` (the default) says so and exits 0: there is nothing to check.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISCRETE = ["mappo.py", "optimistic_mappo.py", "happo.py", "cora_mappo.py", "cora_happo.py"]
CONTINUOUS = ["mappo_continuous.py", "optimistic_mappo_continuous.py", "happo_continuous.py",
              "cora_mappo_continuous.py", "cora_happo_continuous.py"]
# (env id, parallel envs, steps per rollout): the families written in torch
CASES = ([(s, "matrix:team", 16, 25) for s in DISCRETE]
         + [(s, "vmas:navigation", 64, 50) for s in DISCRETE + CONTINUOUS]
         + [(s, "diff:2agents", 16, 25) for s in CONTINUOUS]
         + [("ilvf_ppo.py", env, 16, 50) for env in ("coupled:ring-8", "mpe:encircle-8", "pcp:default", "cacc:slowdown")])
ITERATIONS = 3


class HostReads(TorchDispatchMode):
    """Counts the ops that hand a device value to the host: scalar reads (`.item()`, `bool()`,
    `int()`) and copies from the run's device to the CPU. On the CPU these cost nothing, but the
    same calls on a GPU each wait for the device, so the count is the check's CPU-side proxy."""

    def __init__(self, device):
        super().__init__()
        self.device, self.count, self.simulator = torch.device(device), 0, 0

    def read(self):
        # a read made inside VMAS is the simulator's own (BenchMARL's runs make it too), not ours
        if any(f"{os.sep}vmas{os.sep}" in frame.filename for frame in traceback.extract_stack()):
            self.simulator += 1
        else:
            self.count += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":  # on a GPU run, only reads of device tensors wait
            if self.device.type == "cpu" or args[0].device.type != "cpu":
                self.read()
        elif self.device.type != "cpu" and name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0] if name == "copy_" else out
            if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst.device.type == "cpu":
                self.read()
        return out


def command(script, env_id, envs, steps, device):
    flags = ["--env-id", env_id, "--num-envs", str(envs), "--num-steps", str(steps), "--seed", "1",
             "--total-timesteps", str(ITERATIONS * envs * steps), "--threads", "1", "--save-model",
             "--eval-episodes", "4"]
    return [os.path.join(ROOT, "cleanmarl", script), *flags, *(["--cuda"] if device == "cuda" else [])]


def train(cmd, cwd):
    """One run in its own folder: (returns printed per iteration, greedy eval, last SPS, CORA times)."""
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8")  # deterministic cuBLAS
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=cwd, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    returns = re.findall(r"episodic_return=(\S+)", out.stdout)
    sps = int(re.findall(r"SPS=(\d+)", out.stdout)[-1])
    run_dir = glob.glob(os.path.join(cwd, "runs", "*"))[0]
    with open(os.path.join(run_dir, "eval.json")) as f:
        evaluation = json.load(f)["eval_return_mean"]
    return returns, evaluation, sps, cora_times(run_dir)


def cora_times(run_dir):
    """Mean core/coalition_ms and core/qp_ms per update, where the run logged them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    if "core/qp_ms" not in tags:
        return None
    mean = lambda tag: sum(e.value for e in acc.Scalars(tag)) / len(acc.Scalars(tag))  # noqa: E731
    return mean("core/coalition_ms"), mean("core/qp_ms")


def host_reads(cmd, device):
    """Host reads of one run, counted in a child process (the script runs in it)."""
    code = ("import runpy, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "from docs.device_check import HostReads\n"
            "mode = HostReads(sys.argv[2])\n"
            "sys.argv = sys.argv[3:]\n"
            "with mode:\n"
            "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "print(f'HOST_READS={mode.count} {mode.simulator}')\n")
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", code, ROOT, device, *cmd], capture_output=True, text=True, cwd=cwd)
    found = re.findall(r"HOST_READS=(\d+) (\d+)", out.stdout)
    if not found:
        raise RuntimeError(f"counting host reads failed: {out.stderr.strip()[-300:]}")
    return int(found[-1][0]), int(found[-1][1])


def host_reads_per_step(script, env_id, envs, steps, device):
    """Reads per env step of the rollout: a run of T steps x E envs and one of 2T steps x E/2 envs
    have the same batches and updates and differ only by T more env steps per iteration (set-up,
    updates, logging cancel out)."""
    short = host_reads(command(script, env_id, envs, steps, device), device)
    long = host_reads(command(script, env_id, envs // 2, 2 * steps, device), device)
    return [(b - a) / (ITERATIONS * steps) for a, b in zip(short, long)]  # ours, the simulator's


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="the device the runs train on")
    parser.add_argument("--only", default="", help="keep the cases whose 'script env-id' matches this regex")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("device check skipped: no CUDA device here (torch.cuda.is_available() is False); "
              "`python docs/device_check.py --device cpu` runs the same check on the CPU")
        return 0
    try:
        cases = [c for c in CASES if re.search(args.only, f"{c[0]} {c[1]}")]
    except re.error as e:
        print(f"error: --only '{args.only}' is not a regular expression ({e})", file=sys.stderr)
        return 2
    if not cases:
        print(f"error: no case matches --only '{args.only}'", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device check on {name} ({ITERATIONS} iterations a run, seed 1, one CPU thread)")
    header = f"{'script':32} {'env':16} {'same twice':10} {'SPS':>7} {'CPU SPS':>7} {'ratio':>5} {'reads/step':>10} {'VMAS':>5} {'MC / QP ms, device | CPU'}"
    print(header)
    failed = False
    for script, env_id, envs, steps in cases:
        runs = []
        try:
            for device in [args.device, args.device] + (["cpu"] if args.device != "cpu" else []):
                with tempfile.TemporaryDirectory() as cwd:
                    runs.append(train(command(script, env_id, envs, steps, device), cwd))
        except RuntimeError as e:
            print(f"{script:32} {env_id:16} FAILED: {e}")
            failed = True
            continue
        same = runs[0][:2] == runs[1][:2]
        failed |= not same
        cpu = runs[2] if len(runs) > 2 else runs[0]
        try:
            reads = host_reads_per_step(script, env_id, envs, steps, args.device)
        except RuntimeError as e:
            print(f"{script:32} {env_id:16} FAILED: {e}")
            failed = True
            continue
        times = ""
        if runs[0][3]:
            times = f"{runs[0][3][0]:.1f} / {runs[0][3][1]:.1f} | {cpu[3][0]:.1f} / {cpu[3][1]:.1f}"
        print(f"{script:32} {env_id:16} {'yes' if same else 'NO':10} {runs[0][2]:7d} {cpu[2]:7d} "
              f"{runs[0][2] / cpu[2]:5.2f} {reads[0]:10.1f} {reads[1]:5.1f} {times}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
