"""The price of CORA's credit assignment, as figures (issue 3's targets).

1. `core_allocation` (Eq. 24, batched) on 6400 samples at n = 8 with 127 sampled coalitions,
   against per-sample DAQP and OSQP loops, with the max abs difference to DAQP's solution.
2. SPS of cora_mappo.py (quadratic critic; Monte Carlo, K = 16), cora_happo.py (Monte Carlo) and
   mappo.py with an actor per agent, relative to mappo.py (shared actor) on vmas:navigation with
   64 envs at n = 3, 5, 8 agents, one thread each, same settings. The contenders alternate and
   each keeps its best of `--rounds` runs, to damp the noise of a shared machine; the load
   average is printed with every figure.

3. (`--mc-only`) the Monte-Carlo pass of Eq. (7) at the SMAX and MaMuJoCo tasks' sizes, both
   critics, against its floor: the critic's head per joint action (a [64, 64] GEMM and 128
   sigmoids), measured next to each task.
4. (`--stages`) where an update's time goes: MAPPO, HAPPO and the CORA scripts at their defaults on
   each task, every stage's ms per update from the runs' time/... and core/..._ms tags, and what
   CORA adds over its base with and without the Monte-Carlo pass; `--before REV` also runs the CORA
   scripts of an earlier git revision, alternating with today's.

Usage: python docs/cora_speed.py               (a few minutes on a 2-core CPU)
       python docs/cora_speed.py --mc-only     (about 2 minutes; SMAX and MaMuJoCo installed)
       python docs/cora_speed.py --stages --before a40ac84 --rounds 1     (about 25 minutes)
       python docs/cora_speed.py --qp-only     (the solver timing alone, under a minute)
       python docs/cora_speed.py --agents 8 --steps 12800 --rounds 1
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
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


# The Monte-Carlo pass against its floor (issue 26): the tasks of docs/benchmarks.md, with one update's
# samples at each family's Table V row (SMAX: 20 envs x 100 steps, MaMuJoCo: 4 x 50) and its K (64).
MC_TASKS = [("smax:3s_vs_5z", "discrete", 2000), ("smax:2s3z", "discrete", 2000), ("smax:8m", "discrete", 2000),
            ("mamujoco:HalfCheetah-2x3", "continuous", 200), ("mamujoco:HalfCheetah-6x1", "continuous", 200)]


def best_of(f, rounds):
    f()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def activation_ns(rounds=5, R=8192, H=64):
    """ns per float32 element of tanh and of a sigmoid, in place on an in-cache [R, H] block."""
    x = torch.randn(R, H) * 2
    y = torch.empty_like(x)
    return {name: best_of(lambda: f(y.copy_(x)), rounds) / (R * H) * 1e9
            for name, f in (("tanh", torch.Tensor.tanh_), ("sigmoid", torch.Tensor.sigmoid_))}


def head_floor_ns(rounds=3, H=64):
    """The cheapest exact evaluation of the critic's head found here, ns per joint action: on
    first-layer outputs already in memory, the sigmoid form with its constants folded (one [H, H]
    GEMM, 2 H sigmoids, one H-dot), at the best of several chunk sizes. The tanh form for comparison."""
    W, c, w, c2 = torch.randn(H, H) / 8, torch.randn(H), torch.randn(1, H) / 8, torch.randn(1)
    floor, tanh_form = float("inf"), float("inf")
    for R in (2048, 4096, 8192, 16384):
        x, h, v = torch.randn(R, H), torch.empty(R, H), torch.empty(R, 1)
        y = torch.empty(R, H)

        def sigmoid_form():
            torch.addmm(c, torch.sigmoid(x, out=y), W.T, beta=2.0, alpha=4.0, out=h)
            torch.addmm(c2, h.sigmoid_(), w.T, alpha=2.0, out=v)

        def tanh_head():
            torch.addmm(c, torch.tanh(x, out=y), W.T, out=h)
            torch.addmm(c2, h.tanh_(), w.T, out=v)

        floor = min(floor, best_of(sigmoid_form, rounds) / R * 1e9)
        tanh_form = min(tanh_form, best_of(tanh_head, rounds) / R * 1e9)
    return floor, tanh_form


def mc_timing(rounds=3, K=64, tasks=MC_TASKS):
    """The Monte-Carlo pass (both critics, one update's samples, synthetic draws) at each task's
    n, m = 2^(n-1) - 1 and K, against its floor: critic evaluations x the head's cheapest evaluation."""
    from cleanmarl import cora_mappo, cora_mappo_continuous
    from cleanmarl.envs import make_env

    act = activation_ns(rounds)
    print(f"Monte-Carlo pass, one thread ({load()}): float32 tanh {act['tanh']:.2f} ns / element, sigmoid "
          f"{act['sigmoid']:.2f}. The floor (the critic's head per joint action, sigmoid form) is measured "
          "again next to each task, as this machine's speed drifts; the tanh form beside it")
    print(f"  {'task':<26} {'n':>2} {'m':>4} {'samples':>7} {'evaluations':>11} {'pass':>9} {'ns/eval':>8} "
          f"{'floor':>6} {'tanh':>5} {'x floor':>8}")
    for env_id, kind, B in tasks:
        env = make_env(env_id, 1, 0, "cpu", kind)
        spec = env.spec
        env.close()
        n, S = spec.n_agents, spec.state_dim
        m = 2 ** (n - 1) - 1
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        if kind == "discrete":
            module, A = cora_mappo, spec.n_actions
            twin = module.TwinQ(S, n, A, 64)
            actions, mc = torch.randint(0, A, (B, n), generator=gen), torch.randint(0, A, (B, K, n), generator=gen)
        else:
            module, D = cora_mappo_continuous, spec.action_dim
            twin = module.TwinQ(S, n, D, 64)
            actions, mc = torch.randn(B, n, D, generator=gen), torch.randn(B, K, n, D, generator=gen)
        state, C = torch.randn(B, S, generator=gen), module.sample_coalitions(n, m, gen)
        with torch.no_grad():
            t = best_of(lambda: [module.mc_coalition_q(q, state, actions, mc, C) for q in twin.qs], rounds)
        floor, tanh_form = head_floor_ns(rounds)
        evals = 2 * B * m * K
        print(f"  {env_id:<26} {n:>2} {m:>4} {B:>7} {evals:>11,} {t * 1e3:>6.0f} ms {t / evals * 1e9:>8.0f} "
              f"{floor:>6.0f} {tanh_form:>5.0f} {t / evals * 1e9 / floor:>7.2f}x", flush=True)


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


# Where an update's time goes (issue 26): each contender at its defaults (the family's Table V row and
# its K), one thread, alternating; per update, the mean of each time/... and core/..._ms stage over
# the run's updates after the first (warm-up).
STAGE_TASKS = {"smax:3s_vs_5z": 20_000, "smax:2s3z": 20_000, "smax:8m": 8_000,
               "mamujoco:HalfCheetah-2x3": 32_000, "mamujoco:HalfCheetah-6x1": 16_000}
STAGES = ["time/rollout_ms", "time/gae_ms", "time/update_ms", "core/coalition_ms", "core/qp_ms",
          "core/diagnostics_ms", "core/q_critics_ms", "time/snapshot_ms", "time/iteration_ms"]


def contenders_for(env_id):
    cont = "_continuous" if env_id.startswith("mamujoco") else ""
    return {"MAPPO": (f"mappo{cont}.py", ()), "HAPPO": (f"happo{cont}.py", ()),
            "CORA-MAPPO MC": (f"cora_mappo{cont}.py", ()), "CORA-HAPPO MC": (f"cora_happo{cont}.py", ()),
            "CORA-MAPPO QC": (f"cora_mappo{cont}.py", ("--critic", "quadratic"))}


def staged_run(root, script, env_id, steps, extra):
    """One training run; returns its SPS and the mean ms per update of each stage it logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, os.path.join(root, "cleanmarl", script), "--env-id", env_id,
               "--total-timesteps", str(steps), "--threads", "1", *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        found = re.findall(r"SPS=(\d+)", out.stdout)
        if out.returncode or not found:
            sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
        (run_dir,) = glob.glob(os.path.join(cwd, "runs", "*"))
        acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        stages = {tag: float(np.mean([e.value for e in acc.Scalars(tag)][1:] or [np.nan])) for tag in STAGES if tag in tags}
    return int(found[-1]), stages


def stage_table(tasks, rounds, before=None):
    """Per task: each contender's SPS (best of `rounds` alternating runs) and its stages; with
    `before` (a git revision), the CORA scripts of that revision run alternating with today's."""
    roots = {"": ROOT}
    if before:
        old = tempfile.mkdtemp()
        archive = subprocess.run(["git", "-C", ROOT, "archive", before, "cleanmarl"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        roots[f" @{before}"] = old
    for env_id in tasks:
        steps = STAGE_TASKS.get(env_id, 20_000)
        runs = {}
        for name, (script, extra) in contenders_for(env_id).items():
            for tag, root in roots.items():
                if tag and not name.startswith("CORA"):
                    continue
                runs[name + tag] = (root, script, extra)
        best = {name: (0, {}) for name in runs}
        for _ in range(rounds):
            for name, (root, script, extra) in runs.items():
                result = staged_run(root, script, env_id, steps, extra)
                best[name] = max(best[name], result, key=lambda r: r[0])
        print(f"\n{env_id}, {steps} steps a run, one thread, best of {rounds} alternating rounds ({load()}); "
              "ms per update; each CORA script against its base (CORA-HAPPO: HAPPO; the others: MAPPO):")
        print(f"  {'':<28}{'SPS':>7}{'xbase':>7}" + "".join(f"{t.split('/')[1][:-3]:>12}" for t in STAGES)
              + f"{'extra':>9}{'/base':>7}{'w/o MC':>9}{'/base':>7}")
        for name, (sps_, stages) in best.items():
            base_sps, base = best["HAPPO" if "HAPPO" in name else "MAPPO"]
            # what CORA adds: its iteration minus its base's, and the same without the Monte-Carlo
            # pass (the paper's work: B m K critic evaluations, measured against its floor by --mc-only)
            extra = stages.get("time/iteration_ms", np.nan) - base.get("time/iteration_ms", np.nan)
            other = extra - (stages.get("core/coalition_ms", 0.0) if "MC" in name else 0.0)
            per = base.get("time/iteration_ms", np.nan)
            cells = "".join(f"{stages.get(t, np.nan):>12.1f}" for t in STAGES)
            print(f"  {name:<28}{sps_:>7}{sps_ / base_sps:>7.2f}{cells}{extra:>9.1f}{extra / per:>7.2f}"
                  f"{other:>9.1f}{other / per:>7.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qp-only", action="store_true", help="time the core QP only")
    parser.add_argument("--mc-only", action="store_true", help="time the Monte-Carlo pass against its floor only")
    parser.add_argument("--stages", nargs="*", metavar="ENV_ID",
                        help=f"where an update's time goes, per contender, on these tasks (none given: {' '.join(STAGE_TASKS)})")
    parser.add_argument("--before", metavar="REV", help="with --stages: also run the CORA scripts of this git revision")
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 5, 8], help="numbers of agents")
    parser.add_argument("--steps", type=int, default=12800, help="env steps per training run (2 updates)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each contender keeps its best")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mc_only:
        mc_timing()
        sys.exit(0)
    if args.stages is not None:
        stage_table(args.stages or list(STAGE_TASKS), args.rounds, args.before)
        sys.exit(0)
    qp_timing()
    if not args.qp_only:
        sps_table(args.agents, args.steps, args.rounds)
