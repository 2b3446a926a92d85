"""The price of CORA's credit assignment, as figures (issue 3's targets).

1. `core_allocation` (Eq. 24, batched) on 6400 samples at n = 8 with 127 sampled coalitions,
   against per-sample DAQP and OSQP loops, with the max abs difference to DAQP's solution.
2. SPS of cora_mappo.py (quadratic critic; Monte Carlo, K = 16), cora_happo.py (Monte Carlo) and
   mappo.py with an actor per agent, relative to mappo.py (shared actor) on vmas:navigation with
   64 envs at n = 3, 5, 8 agents, one thread each, same settings. The contenders alternate and
   each keeps its best of `--rounds` runs, to damp the noise of a shared machine; the load
   average is printed with every figure.

Usage: python docs/cora_speed.py               (a few minutes on a 2-core CPU)
       python docs/cora_speed.py --qp-only     (the solver timing alone, under a minute)
       python docs/cora_speed.py --agents 8 --steps 12800 --rounds 1
"""

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cleanmarl.cora_mappo import core_allocation, sample_coalitions  # noqa: E402


def load():
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def osqp_loop(coalitions, coalition_adv, grand_adv, reg):
    """Eq. (24) with OSQP, one sample at a time, tight and polished (OSQP's default tolerances are off
    by up to 0.1 on this problem): the per-sample loop the batched solver is measured against."""
    import osqp
    import scipy.sparse as sparse

    B, m = coalition_adv.shape
    n = coalitions.shape[-1]
    M, v, AN = coalitions.double().numpy(), coalition_adv.double().numpy(), grand_adv.double().numpy()
    P = sparse.diags(np.r_[np.full(n, 2.0 * reg), 0.0]).tocsc()  # x = (A, eps)
    C = sparse.csc_matrix(np.r_[np.r_[np.ones(n), 0.0][None], np.c_[M, np.ones(m)], np.r_[np.zeros(n), 1.0][None]])
    alloc, solver = np.zeros((B, n)), None
    for b in range(B):
        q = np.r_[np.full(n, -2.0 * reg * AN[b] / n), 1.0]
        lo, hi = np.r_[AN[b], v[b], 0.0], np.r_[AN[b], np.full(m + 1, np.inf)]
        if solver is None:
            solver = osqp.OSQP()
            solver.setup(P, q, C, lo, hi, eps_abs=1e-9, eps_rel=1e-9, max_iter=200_000, polishing=True, verbose=False)
        else:
            solver.update(q=q, l=lo, u=hi)
        alloc[b] = solver.solve(raise_error=True).x[:n]
    return alloc


def qp_timing(n=8, B=6400, reg=1e-2, osqp_samples=200, rounds=3):
    import daqp

    gen = torch.Generator().manual_seed(0)
    C = sample_coalitions(n, 2 ** (n - 1) - 1, gen)
    m = len(C)
    v = torch.randn(B, m, generator=gen, dtype=torch.float64) * 3
    AN = torch.randn(B, generator=gen, dtype=torch.float64) * 3
    core_allocation(C, v[:64], AN[:64], reg)  # warm-up
    H = np.diag(np.r_[np.full(n, 2 * reg), 0.0])
    rows = np.r_[np.r_[np.ones(n), 0.0][None], np.c_[C.double().numpy(), np.ones(m)], np.r_[np.zeros(n), 1.0][None]]
    sense = np.zeros(m + 2, dtype=np.int32)
    sense[0] = 5  # the efficiency row is an equality

    def daqp_loop():  # the per-sample loop is the contender
        out = np.zeros((B, n))
        for b in range(B):
            f = np.r_[np.full(n, -2 * reg * AN[b].item() / n), 1.0]
            x, _, flag, _ = daqp.solve(H, f, rows, np.r_[AN[b].item(), np.full(m + 1, 1e30)],
                                       np.r_[AN[b].item(), v[b].numpy(), 0.0], sense)
            assert flag == 1
            out[b] = x[:n]
        return out

    # the two alternate, each keeps its best of `rounds`: this machine's speed drifts
    t_batched = t_daqp = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        alloc, _ = core_allocation(C, v, AN, reg)
        t_batched = min(t_batched, time.perf_counter() - start)
        start = time.perf_counter()
        reference = daqp_loop()
        t_daqp = min(t_daqp, time.perf_counter() - start)
    err = float(np.abs(reference - alloc.numpy()).max())
    start = time.perf_counter()
    osqp_loop(C, v[:osqp_samples], AN[:osqp_samples], reg)
    t_osqp = (time.perf_counter() - start) * B / osqp_samples
    print(f"core_allocation (Eq. 24), n={n}, {m} coalitions, {B} samples, best of {rounds} alternating rounds "
          f"({load()}):")
    print(f"  batched {t_batched * 1e3:.0f} ms | DAQP loop {t_daqp * 1e3:.0f} ms ({t_daqp / t_batched:.2f}x ours) | "
          f"OSQP loop {t_osqp * 1e3:.0f} ms, from {osqp_samples} samples ({t_osqp / t_batched:.1f}x ours) | "
          f"max abs diff to DAQP {err:.1e}", flush=True)


def sps(script, env_id, steps, extra=()):
    # the full batch, as when docs/benchmarks.md's figures were measured (the VMAS rows now default to 4 minibatches)
    cmd = [sys.executable, os.path.join(ROOT, "cleanmarl", script), "--env-id", env_id, "--num-envs", "64",
           "--num-minibatches", "1", "--total-timesteps", str(steps), "--threads", "1", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.environ.get("TMPDIR", "/tmp"))
    found = re.findall(r"SPS=(\d+)", out.stdout)
    if out.returncode or not found:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return int(found[-1])


def sps_table(agents, steps, rounds):
    contenders = {"MAPPO": ("mappo.py", ()),
                  "MAPPO per-agent": ("mappo.py", ("--no-share-actor",)),
                  "CORA quadratic": ("cora_mappo.py", ("--critic", "quadratic")),
                  "CORA MC (K=16)": ("cora_mappo.py", ("--critic", "mc", "--mc-samples", "16")),
                  "CORA-HAPPO MC": ("cora_happo.py", ("--critic", "mc", "--mc-samples", "16"))}
    print(f"\nSPS on vmas:navigation, 64 envs, {steps} steps per run, best of {rounds} alternating rounds"
          " (each CORA script with its defaults: an actor per agent, 50 Q epochs a rollout):")
    print(f"  {'agents':>6} " + " ".join(f"{name:>18}" for name in contenders) + "   load")
    for n in agents:
        env_id = f"vmas:navigation,n_agents={n}"
        best = {name: 0 for name in contenders}
        for _ in range(rounds):
            for name, (script, extra) in contenders.items():
                best[name] = max(best[name], sps(script, env_id, steps, extra))
        base = best["MAPPO"]
        cells = [f"{base:>18}"] + [f"{v:>9} ({v / base:.2f}x)" for name, v in best.items() if name != "MAPPO"]
        print(f"  {n:>6} " + " ".join(cells) + f"   {load()}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qp-only", action="store_true", help="time the core QP only")
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 5, 8], help="numbers of agents")
    parser.add_argument("--steps", type=int, default=12800, help="env steps per training run (2 updates)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each contender keeps its best")
    args = parser.parse_args()
    torch.set_num_threads(1)
    qp_timing()
    if not args.qp_only:
        sps_table(args.agents, args.steps, args.rounds)
