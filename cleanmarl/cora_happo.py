"""CORA-HAPPO for discrete actions: core credit assignment in HAPPO's sequential update.

Papers: "CORA: Core Credit Assignment for Multi-Agent Policy Gradients" (../shared/papers, Alg. 1)
and Kuba et al., "Trust Region Policy Optimisation in Multi-Agent Reinforcement Learning", ICLR 2022.
Idea: HAPPO (see happo.py) updates the agents one after another in a fresh random order, agent
i_k maximizing M * min(r A, clip(r) A) with M = prod_{j<k} pi_new(a_{i_j}) / pi_old(a_{i_j}) the
ratios of the agents already updated; every agent gets the same global advantage A_N. CORA-HAPPO
keeps that sequential update and replaces A_N in agent i's surrogate by its own share A_i of the
regularized least epsilon-core allocation (see cora_mappo.py): coalitions with a high advantage
get at least that much credit in total, so a good partial joint action is not punished for the
others' bad exploration.
Choices (the CORA paper evaluates CORA-PPO, gives no CORA-HAPPO algorithm, and its Theorem 8
derives per-agent updates r_i A_i under one joint trust region):
  - the allocation is computed once per rollout, before the sequential update, from the
    policies that collected the rollout (as in CORA-MAPPO), and is not recomputed between agents;
  - the factor M is HAPPO's, unchanged: agent i_k maximizes M * min(r A_{i_k}, clip(r) A_{i_k});
  - the allocation is scaled per minibatch by one common std over all agents (`scale_allocation`,
    which keeps the core constraints) in place of HAPPO's advantage normalization;
  - the value critic and both Q critics are trained after the actors.
Defaults follow Table V of the CORA paper for matrix games (this script's main family).

Run:  python cleanmarl/cora_happo.py --env-id matrix:penalty
      python cleanmarl/cora_happo.py --env-id matrix:team --critic quadratic

What this file implements, and where:
  GAE for the grand coalition A_N (Alg. 1 l. 19)        -> `compute_gae`
  twin critics Q_1, Q_2 on y = r + gamma V(s') (l. 11, 25) -> `TwinQ` / `QuadraticQ`, "Q critics" block
                                   (--q-epochs after the actor and V updates, in Alg. 1's order)
  m sampled coalitions (l. 13; --coalition-sets per block of timesteps) -> `sample_coalitions`
  Eq. (7), Monte-Carlo: A_C = min_j 1/K sum_k Q_j(s, a_C, a^k_-C) - V(s) -> `mc_coalition_q`
  Eq. (7), quadratic critic (CORA-PPO-QC, Sec. V-A): closed form with pi_j for j outside C
                                                         -> `QuadraticQ.coalition_q`
  Eq. (24), regularized least epsilon-core QP, batched   -> `core_allocation`
    (per-sample OSQP reference: `--qp-solver osqp`)     -> `core_allocation_osqp`
  allocation scaling that keeps the core constraints     -> `scale_allocation`
  core/adv_corr's truth, for envs whose next state ignores the actions -> `true_coalition_adv`
  HAPPO surrogate with the allocated A_i, M * min(r A_i, clip(r) A_i) -> `happo_surrogate`
  sequential update in a random order, M *= r_{i_k}    -> `sequential_actor_update`
  clipped value loss (Huber), value normalization      -> `value_loss`, `RunningMeanStd`
  dead agents (step.active false) left out of the loss -> `masked_mean`

Shape convention: [T, E, n, ...] = (time, envs, agents, features); B = T * E samples;
m coalitions, K Monte-Carlo samples, coalitions as bool masks [m, n].
"""

import json
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.distributions.categorical import Categorical
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file
from cleanmarl.envs import EnvError, make_env  # noqa: E402


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environment)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = False
    """if toggled, run on CUDA when available (the env tensors live there too)"""
    track: bool = False
    """if toggled, log to Weights and Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "cleanmarl"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """if toggled, record videos of the evaluation episodes (no env family here renders yet)"""
    save_model: bool = False
    """if toggled, save a checkpoint to runs/{run_name}/ and evaluate it greedily"""
    eval_episodes: int = 10
    """number of greedy evaluation episodes after training (with --save-model)"""
    threads: int = 1
    """torch CPU threads (1 is fastest and stable on small shared machines)"""

    # Environment
    env_id: str = "matrix:team"
    """the id of the environment, `family:scenario` (see README)"""
    total_timesteps: int = 100_000
    """total environment steps (summed over parallel envs)"""
    num_envs: int = 4
    """the number of parallel environments"""
    num_steps: int = 100
    """the number of steps per environment per rollout"""

    # PPO
    learning_rate: float = 5e-4
    """the learning rate of each agent's actor"""
    critic_learning_rate: float = 5e-3
    """the learning rate of the value critic and of the twin Q critics"""
    anneal_lr: bool = True
    """toggle linear annealing of both learning rates to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda of generalized advantage estimation"""
    num_minibatches: int = 1
    """the number of minibatches per epoch (over env-steps)"""
    update_epochs: int = 10
    """the number of PPO epochs per rollout (for each agent, and for the critic)"""
    clip_coef: float = 0.3
    """the PPO surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggle clipping of the value loss around the rollout's values (same coefficient)"""
    value_norm: bool = True
    """toggle normalization of value targets by running statistics"""
    huber_delta: float = 10.0
    """delta of the Huber value loss; 0 uses the squared error"""
    ent_coef: float = 1e-3
    """the entropy bonus coefficient"""
    max_grad_norm: float = 10.0
    """the maximum gradient norm of the actor and of the critic"""
    target_kl: Optional[float] = None
    """stop an agent's epochs early once its approximate KL exceeds this"""
    hidden_dim: int = 64
    """width of the two hidden layers of actor and critic"""

    # CORA
    critic: Literal["mc", "quadratic"] = "mc"
    """coalition values: "mc" twin MLP critics with Monte-Carlo marginalization, "quadratic" the closed-form CORA-PPO-QC critic"""
    num_coalitions: int = -1
    """coalitions sampled per update; -1: 2^(n-1)-1 as in the paper; >= 2^n-2: all proper subsets"""
    coalition_sets: int = 1
    """independent coalition draws per update, each for its own block of timesteps (Alg. 1 l. 13 draws per timestep: --coalition-sets = --num-steps); 1: one draw for the whole batch"""
    mc_samples: int = 16
    """K, Monte-Carlo samples of the other agents' actions per coalition (Table V: 16 or 64)"""
    core_reg: float = 1e-2
    """lambda_reg of Eq. (24), the variance (Std) term; 0 is the paper's "w/o std" ablation"""
    qp_solver: Literal["ipm", "osqp"] = "ipm"
    """Eq. (24) solver: "ipm" batched interior point (all rows screened in float32, finished on the rows that bind, with an exact crossover); "osqp" a per-sample OSQP loop (tight, polished), the slow reference"""
    scale_alloc: bool = True
    """toggle dividing the allocations by their common std (no per-agent mean shift: the core constraints survive)"""
    violation_samples: int = 64
    """samples per update on which core/violation_ratio checks all 2^n-2 coalitions (0: off; n <= 12); a diagnostic, kept small: with Monte Carlo its coalition pass costs (2^n-2)/m * samples/batch of the main one"""
    truth_samples: int = 64
    """samples per update on which core/adv_corr compares the estimated A_C with the true one, where the env gives it (matrix games with A^n <= 4096; 0: off)"""

    # Q critics (Alg. 1 l. 25)
    q_epochs: int = 50
    """epochs of Q-critic regression per update, run after the actor and V updates (Alg. 1's order), with --num-minibatches minibatches each"""
    q_learning_rate: Optional[float] = None
    """the learning rate of the twin Q critics (default: --critic-learning-rate, Table V's critic rate)"""
    anneal_q_lr: bool = False
    """toggle linear annealing of the Q critics' learning rate to 0 (off: they keep tracking the moving policy)"""

    # to be filled in at runtime
    batch_size: int = 0
    """env-steps per rollout (num_envs * num_steps)"""
    minibatch_size: int = 0
    """env-steps per minibatch"""
    num_iterations: int = 0
    """number of rollouts"""


def all_coalitions(n, device=None):
    """Every proper non-empty subset of n agents as bool masks [2^n - 2, n]."""
    codes = torch.arange(1, 2**n - 1, device=device)
    return (codes.unsqueeze(-1) >> torch.arange(n, device=device)) & 1 == 1


def sample_coalitions(n, m, generator=None, device=None):
    """Alg. 1 line 13: m distinct coalitions drawn uniformly from the proper non-empty subsets
    [min(m, 2^n-2), n] (all of them when m >= 2^n - 2)."""
    coalitions = all_coalitions(n, device)
    if m >= len(coalitions):
        return coalitions
    return coalitions[torch.randperm(len(coalitions), generator=generator)[:m].to(coalitions.device)]


def true_coalition_adv(reward_of, state, actions, probs, coalitions):
    """The truth that core/adv_corr measures Eq. (7)'s estimate against, for envs whose next state
    does not depend on the actions (there Q(s, a_C, a_-C) - V(s) = r(s, a_C, a_-C) - E_pi[r(s, a)]):
    A_C = E_{a_-C ~ pi}[r(s, a_C, a_-C)] - E_{a ~ pi}[r(s, a)], exact, over all A^n joint actions.
    reward_of: the env's, state [B, S], actions [B, n], probs [B, n, A], coalitions [m, n]
    or per sample [B, m, n] -> [B, m]."""
    B, n, A = probs.shape
    joint = torch.cartesian_prod(*[torch.arange(A, device=probs.device)] * n).view(-1, n)  # [A^n, n]
    r = reward_of(state.unsqueeze(1).expand(-1, len(joint), -1), joint.expand(B, -1, -1))  # [B, A^n]
    p = probs.gather(2, joint.T.expand(B, -1, -1))  # [B, n, A^n]: pi_i(joint_i)
    taken = (joint.T == actions.unsqueeze(-1)).to(p.dtype)  # [B, n, A^n]: joint_i = a_i
    # each joint action's probability when C keeps a_C and the others follow pi
    m = coalitions.shape[-2]
    inside = coalitions.movedim(-2, 0).reshape(m, -1, n, 1)  # [m, 1 or B, n, 1]
    weight = torch.where(inside, taken, p).prod(-2)  # [m, B, A^n]
    return (weight * r).sum(-1).T - (p.prod(1) * r).sum(-1, keepdim=True)


# Eq. (24): regularized least epsilon-core,
#   min_{eps >= 0, A} eps + reg * sum_i (A_i - A_N / n)^2  s.t.  sum_i A_i = A_N,  sum_{i in C} A_i >= A_C - eps.
def core_allocation(coalitions, coalition_adv, grand_adv, reg, work_rows=None, chunk=2048):
    """Batched solve of Eq. (24) for B samples sharing one coalition set.
    coalitions [m, n] bool, coalition_adv [B, m], grand_adv [B] -> (alloc [B, n], eps [B]).

    With x = A - A_N/n = Z y (Z an orthonormal basis of sum-zero vectors) the problem is
    min eps + reg |y|^2 over z = (y, eps) subject to G z >= h, one row per coalition plus eps >= 0.
    At the optimum only about n of the m rows bind, so after a few cheap interior-point steps on
    every row each sample goes on with just the k = `work_rows` (default 3n) rows that look binding
    (see `_ipm`). A check of all m rows then sends the rare sample whose set missed a binding row
    round again with a larger k, up to all m rows: the exact problem. A sample with no positive h
    is solved by the equal split with eps = 0 (its objective, 0, is the least possible).
    The returned eps is the tightest one for the returned allocation."""
    dt, dev = torch.float64, coalition_adv.device
    B, m = coalition_adv.shape
    n = coalitions.shape[-1]
    M = coalitions.to(dt)  # [m, n]
    v, AN = coalition_adv.to(dt), grand_adv.to(dt)
    if n == 1:
        eps = (v - AN[:, None] * M[:, 0]).amax(1).clamp(min=0.0)
        return AN[:, None].to(coalition_adv.dtype), eps.to(coalition_adv.dtype)
    Z = torch.linalg.qr(torch.eye(n, dtype=dt, device=dev) - 1.0 / n)[0][:, : n - 1]  # [n, n-1], 1^T Z = 0
    G = torch.cat([M @ Z, torch.ones(m, 1, dtype=dt, device=dev)], 1)  # [m, n]: rows (M_c Z, 1)
    h = v - M.sum(-1) * AN[:, None] / n  # [B, m]
    scale = h.abs().amax(1, keepdim=True).clamp(min=1e-6)  # [B, 1], for relative tolerances
    # reg = 0 is an LP whose working-set subproblems can be unbounded: solve it on every row
    step = min(m, work_rows or 3 * n) if reg > 0 else m
    z = torch.zeros(B, n, dtype=dt, device=dev)
    todo = (h.amax(1) > 0).nonzero().squeeze(1)  # the others keep z = 0
    for k in range(step, m + step, step):
        for part in todo.tensor_split(max(1, round(len(todo) / chunk))):  # ~cache-sized chunks: faster than one batch
            z[part] = _ipm(G, h[part], scale[part], reg, keep=min(k, m))
        bad = (h[todo] - z[todo] @ G.T).amax(1) > 1e-7 * scale[todo, 0]  # a row violated
        todo = todo[bad]
        if not len(todo):
            break
    A = z[:, : n - 1] @ Z.T + AN[:, None] / n
    eps = (v - A @ M.T).amax(1).clamp(min=0.0)
    return A.to(coalition_adv.dtype), eps.to(coalition_adv.dtype)


def _ipm(G, h, scale, reg, keep, max_iters=30, tol=1e-12, screen_iters=3, f32_iters=6, cross_iters=7):
    """Primal-dual interior point (Mehrotra predictor-corrector), batched over samples:
    min eps + reg |y|^2 over z = (y, eps) s.t. G z >= h and eps >= 0, for the shared G [m, n] and
    each sample's h [B, m] (scale [B, 1] its size). -> z [B, n].
    The first `screen_iters` steps run on all rows, from an interior point; then each sample keeps
    only the `keep` rows with the largest multiplier-to-slack ratio (the ones heading to bind), and
    the rest of the steps run on those: a few batched products with the samples' [keep + 1, n] row
    blocks, elementwise work on [B, keep + 1] and a batched n x n Cholesky. The first `f32_iters`
    steps run in float32 (or fewer, until a sample nears float32's resolution), the rest in
    float64. From step `cross_iters` on, each step also tries a crossover: the rows whose
    multiplier exceeds a tenth of their slack are solved as equalities (a few multiplier-method
    steps on one more Cholesky), and a sample whose answer passes the KKT checks is done, exactly,
    several steps before the interior point would converge. Converged samples leave the batch, so
    the slowest do not keep it iterating. The caller checks the answer against all rows (a binding
    row may have been dropped)."""
    B, m = h.shape
    n = G.shape[1]
    dt, dev = G.dtype, G.device
    unit = torch.zeros(n, dtype=dt, device=dev)
    unit[-1] = 1.0  # the row eps >= 0, and the gradient of the linear part (eps)
    G = torch.cat([G, unit[None]])  # [m + 1, n]; row m is eps >= 0
    h64 = torch.cat([h, torch.zeros(B, 1, dtype=dt, device=dev)], 1)  # [B, m + 1]
    qdiag = 2.0 * reg * (1.0 - unit)  # Hessian of the objective in z
    # start inside the feasible set: the equal split with eps above every h, and multipliers
    # summing to 1 (which makes the eps part of the dual residual zero)
    z = torch.zeros(B, n, dtype=dt, device=dev)
    z[:, -1] = h.amax(1).clamp(min=0.0) + 0.1 * scale[:, 0]
    s = z[:, -1:] - h64
    lam = torch.full_like(s, 1.0 / (m + 1))
    z_out = z.clone()
    live = torch.arange(B, device=dev)  # the samples still iterating
    rows = None  # None: every row (dense products), else each sample's rows [b, p]
    Gr = None  # in float64, each sample's row block G[rows] [b, p, n]
    Gs, hs, scale_s, z, s, lam, qdiag_s, unit_s = (x.float() for x in (G, h64, scale, z, s, lam, qdiag, unit))
    outer = (Gs[:, :, None] * Gs[:, None, :]).flatten(1)  # [m + 1, n * n]: each row's g g^T
    Gst = Gs.T.contiguous()

    def rows_times(x):  # G[rows] x: [b, n] -> [b, p]
        return x @ Gst if rows is None else (x @ Gst).gather(1, rows)

    def rows_t_times(w):  # G[rows]^T w: [b, p] -> [b, n]
        if rows is None:
            return (Gst @ w.T).T.contiguous()  # 3x faster than w @ Gs, whose output is only n wide
        if Gr is None:  # float32: a weighted embedding bag is one fused gather-sum
            return nn.functional.embedding_bag(rows, Gs, per_sample_weights=w, mode="sum")
        # float64 (where the bag has no fast kernel): a product into a reused buffer (fresh ones
        # of this size cost page faults on every call) and a sum beat a batched matmul
        return torch.mul(Gr, w.unsqueeze(-1), out=buf).sum(1)

    def normal_matrix(w):  # G[rows]^T diag(w) G[rows] + Q, plus a relative jitter (PD when reg = 0): [b, n, n]
        if rows is None:
            H = (w @ outer).view(-1, n, n)
        elif Gr is None:  # float32: the rows' g g^T, summed by a weighted bag
            H = nn.functional.embedding_bag(rows, outer, per_sample_weights=w, mode="sum").view(-1, n, n)
        else:
            H = torch.bmm(Gr.transpose(1, 2), torch.mul(Gr, w.unsqueeze(-1), out=buf))
        jitter = 1e-14 if H.dtype == torch.float64 else 1e-6
        diag = H.diagonal(dim1=1, dim2=2)
        diag += jitter * diag.amax(1, keepdim=True) + (qdiag_s + jitter)
        return H

    def step_to_boundary(ds, dl):  # largest step in (0, 1] keeping s + a ds >= 0 and lam + a dl >= 0
        fall = torch.minimum((ds / s).amin(1, keepdim=True), (dl / lam).amin(1, keepdim=True))  # >= -1/a
        return (-fall).clamp(min=1.0).reciprocal()

    def crossover():  # -> z [b, n] solving the problem with the rows that look binding as equalities, and
        # whether that z is optimal: the KKT conditions on the sample's rows, each checked
        act = lam > 0.1 * s
        D = act * rho
        L, info = torch.linalg.cholesky_ex(normal_matrix(D))
        la = lam * act
        for _ in range(3):  # method of multipliers from the interior point's multipliers: 3 steps reach rounding
            zx = torch.cholesky_solve((rows_t_times(torch.addcmul(la, D, hs)) - unit_s).unsqueeze(-1), L).squeeze(-1)
            r = rows_times(zx) - hs  # G z - h on the sample's rows
            la = la - D * r
        stationary = (zx * qdiag_s + unit_s - rows_t_times(la)).abs().amax(1) <= 1e-9 * scale_s[:, 0].clamp(min=1.0)
        return zx, (info == 0) & stationary & (la.amin(1) >= -1e-9) & (  # multipliers >= 0
            torch.where(act, r.abs(), -r).amax(1) <= 1e-8 * scale_s[:, 0])  # binding rows tight, the rest feasible

    rho = 2e4 * reg if reg > 0 else 1.0  # the equality penalty, 1e4 times the curvature (each step gains 1e-4)

    # the primal residual G z - s - h [b, p] is 0 at the start and each step scales it by (1 - a): None
    # stands for 0 until float64 brings in the rounding of float32's steps
    rp = None
    for it in range(max_iters):
        # float32 until a sample nears its resolution
        near = Gs.dtype != dt and bool(((s * lam).mean(1) < 1e-7 * scale_s[:, 0]).any())
        if rows is None and (it == screen_iters or near):  # on with each sample's `keep` rows that look binding
            score = (lam / s).index_fill_(1, torch.tensor([m], device=dev), torch.inf)  # (and always eps >= 0)
            # (positive float32s order as their bit patterns, and topk is faster on ints)
            rows = score.view(torch.int32).topk(min(keep, m) + 1, 1, sorted=False).indices  # [b, p]
            s, lam, hs = s.gather(1, rows), lam.gather(1, rows), hs.gather(1, rows)
        if Gs.dtype != dt and rows is not None and (it == f32_iters or near):  # on in float64
            s, lam = s.to(dt), lam.to(dt)
            Gs, Gst, hs, Gr = G, G.T.contiguous(), h64.gather(1, rows), nn.functional.embedding(rows, G)
            z, scale_s, qdiag_s, unit_s = z.to(dt), scale, qdiag, unit  # (no sample has left yet)
            buf = torch.empty_like(Gr)
            rp = rows_times(z) - s - hs  # in float64, once: a step of length a then scales it by 1 - a
        rd = z * qdiag_s + unit_s - rows_t_times(lam)  # dual residual [b, n]
        mu = (s * lam).mean(1, keepdim=True)
        rd_max = rd.abs().amax(1, keepdim=True)
        if Gs.dtype == dt:
            done = ((mu < tol * scale_s) & (torch.maximum(rp.abs().amax(1, keepdim=True), rd_max) < 3e-8 * scale_s))
            done = done.squeeze(1)
            if it >= cross_iters:
                zx, exact = crossover()
                z, done = torch.where(exact.unsqueeze(1), zx, z), done | exact
            if bool(done.any()):  # converged samples leave the batch
                z_out[live[done]] = z[done]
                stay = ~done
                if not bool(stay.any()):
                    break
                live, rows, Gr, hs, scale_s = live[stay], rows[stay], Gr[stay], hs[stay], scale_s[stay]
                buf = buf[: len(live)]
                z, s, lam, rd, rp, mu, rd_max = z[stay], s[stay], lam[stay], rd[stay], rp[stay], mu[stay], rd_max[stay]
        w = lam / s
        L, info = torch.linalg.cholesky_ex(normal_matrix(w))
        failed = info != 0  # such a sample stays put this step (a unit factor keeps its numbers finite)
        if bool(failed.any()):
            L[failed] = torch.eye(n, dtype=L.dtype, device=dev)

        def newton(r):  # reduced KKT system for the complementarity target r * s
            rhs = rows_t_times(r if rp is None else torch.addcmul(r, w, rp, value=-1.0)) - rd
            dz = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
            ds = rows_times(dz) if rp is None else rows_times(dz) + rp
            return dz, ds, torch.addcmul(r, w, ds, value=-1.0)

        dz, ds, dl = newton(-lam)  # predictor (affine scaling)
        a = step_to_boundary(ds, dl)
        sigma = ((torch.addcmul(s, a, ds) * torch.addcmul(lam, a, dl)).mean(1, keepdim=True) / mu).clamp(0, 1) ** 3
        # but stay central while the dual residual lags: past that, ill-conditioned steps stall it
        sigma = torch.maximum(sigma, (1e-3 * rd_max / mu).clamp(max=0.5))
        dz, ds, dl = newton((sigma * mu - ds * dl) / s - lam)  # corrector
        a = 0.99 * step_to_boundary(ds, dl)
        if bool(failed.any()):
            a = a.masked_fill(failed.unsqueeze(-1), 0.0)
        z, s, lam = torch.addcmul(z, a, dz), torch.addcmul(s, a, ds), torch.addcmul(lam, a, dl)
        if rp is not None:
            rp = rp * (1.0 - a)  # (G dz - ds = -rp by construction of ds)
    else:  # out of iterations: the rest as they stand
        z_out[live] = z.to(dt)
    return z_out


def core_allocation_osqp(coalitions, coalition_adv, grand_adv, reg):
    """Eq. (24) with OSQP, one sample at a time (the reference path; needs `pip install osqp`).
    Tight tolerances and polishing: OSQP's defaults are off by up to 0.1 on this problem."""
    import osqp
    import scipy.sparse as sparse

    B, m = coalition_adv.shape
    n = coalitions.shape[-1]
    M = coalitions.cpu().double().numpy()
    v, AN = coalition_adv.cpu().double().numpy(), grand_adv.cpu().double().numpy()
    P = sparse.diags(np.r_[np.full(n, 2.0 * reg), 0.0]).tocsc()  # x = (A, eps)
    C = sparse.csc_matrix(np.r_[np.r_[np.ones(n), 0.0][None], np.c_[M, np.ones(m)], np.r_[np.zeros(n), 1.0][None]])
    alloc = np.zeros((B, n))
    solver = None
    for b in range(B):  # the reference is a per-sample loop by design
        q = np.r_[np.full(n, -2.0 * reg * AN[b] / n), 1.0]
        lo, hi = np.r_[AN[b], v[b], 0.0], np.r_[AN[b], np.full(m + 1, np.inf)]
        if solver is None:
            solver = osqp.OSQP()
            solver.setup(P, q, C, lo, hi, eps_abs=1e-9, eps_rel=1e-9, max_iter=200_000, polishing=True, verbose=False)
        else:
            solver.update(q=q, l=lo, u=hi)
        alloc[b] = solver.solve(raise_error=True).x[:n]
    alloc = torch.as_tensor(alloc, dtype=coalition_adv.dtype, device=coalition_adv.device)
    eps = (coalition_adv - alloc @ coalitions.to(alloc.dtype).T).amax(1).clamp(min=0.0)
    return alloc, eps


def scale_allocation(alloc):
    """Divide the allocations [M, n] by one common std. A shared positive scale keeps efficiency
    and every core constraint (both sides scale alike); a per-agent mean shift would not."""
    return alloc / (alloc.std() + 1e-8)


def compute_gae(rewards, values, dones, next_value, next_done, gamma, lam):
    """GAE over time. rewards, values, dones [T, E] (dones[t]: the episode was over before step t);
    next_value, next_done [E] after the last step. Returns advantages [T, E]."""
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(next_value)
    for t in reversed(range(T)):  # a recursion over time; batched over envs
        nextnonterminal = 1.0 - (next_done if t == T - 1 else dones[t + 1])
        nextvalues = next_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
        advantages[t] = lastgaelam
    return advantages


def masked_mean(x, mask):
    """Mean of x over the entries where mask is true (dead agents' steps are left out)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def value_loss(new_v, old_v, target, clip_coef, clip, huber_delta):
    """Clipped value loss (MAPPO): max of the losses of the new and of the clipped value."""
    def err(x):
        if huber_delta > 0:
            return nn.functional.huber_loss(x, target, reduction="none", delta=huber_delta)
        return 0.5 * (x - target) ** 2

    if not clip:
        return err(new_v).mean()
    clipped = old_v + (new_v - old_v).clamp(-clip_coef, clip_coef)
    return torch.max(err(new_v), err(clipped)).mean()


class RunningMeanStd(nn.Module):
    """Running mean and variance of value targets (parallel-variance update)."""

    def __init__(self, eps: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("count", torch.tensor(eps))

    def update(self, x):
        batch_mean, batch_var, n = x.mean(), x.var(unbiased=False), x.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)

    def normalize(self, x):
        return (x - self.mean) / torch.sqrt(self.var + 1e-8)

    def denormalize(self, x):
        return x * torch.sqrt(self.var + 1e-8) + self.mean


def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim, hidden, out_dim, out_std):
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, out_dim), std=out_std),
    )


class Actors(nn.Module):
    """One policy network per agent (no parameter sharing), each with its own optimizer.
    forward: all agents at once, obs [..., n, obs_dim] -> masked logits [..., n, A], by stacking
    the agents' weights (one batched matmul per layer, no loop over samples); agent(k, ...):
    agent k alone, which is what its sequential update differentiates."""

    def __init__(self, obs_dim, n_agents, n_actions, hidden):
        super().__init__()
        self.agents = nn.ModuleList(mlp(obs_dim, hidden, n_actions, out_std=0.01) for _ in range(n_agents))

    def forward(self, obs, avail):
        x = obs
        for i in range(0, len(self.agents[0]), 2):  # Linear layers sit at even indices
            weight = torch.stack([net[i].weight for net in self.agents])  # [n, out, in]
            bias = torch.stack([net[i].bias for net in self.agents])  # [n, out]
            x = torch.einsum("...ni,noi->...no", x, weight) + bias
            if i + 1 < len(self.agents[0]):
                x = torch.tanh(x)
        return x.masked_fill(~avail, -1e10)

    def dist(self, obs, avail):
        return Categorical(logits=self(obs, avail))

    def agent_dist(self, k, obs_k, avail_k):
        """Agent k's policy on its own observations obs_k [..., obs_dim]."""
        return Categorical(logits=self.agents[k](obs_k).masked_fill(~avail_k, -1e10))


def happo_surrogate(ratio, adv, factor, clip_coef):
    """HAPPO's clipped surrogate (to maximize) per sample: M * min(r A, clip(r, 1-c, 1+c) A)."""
    return factor * torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)


def sequential_actor_update(actors, optimizers, perm, b_obs, b_avail, b_active, b_actions, b_logprobs, b_alloc,
                            args):
    """Update the agents one at a time in the order `perm`. Agent perm[k]'s surrogate is weighted
    by M, the product of the new/old probability ratios of perm[0..k-1] after their updates,
    and uses the agent's own allocated advantage A_{perm[k]}.
    b_obs [B,n,obs_dim], b_avail [B,n,A], b_active, b_actions, b_logprobs [B,n], b_alloc [B,n] (the allocated A_i).
    Returns the factor M each agent used [n, B] and the last minibatch's statistics."""
    B = b_alloc.shape[0]
    factor = torch.ones(B, device=b_alloc.device)  # M for the next agent in the order
    factors = torch.ones(b_logprobs.shape[1], B, device=b_alloc.device)  # [n, B]
    stats = {"clipfracs": []}
    for k in perm:  # the order is the algorithm: each agent sees its predecessors' new policies
        factors[k] = factor
        for epoch in range(args.update_epochs):
            b_inds = torch.randperm(B, device=b_alloc.device)
            for start in range(0, B, args.minibatch_size):
                mb = b_inds[start : start + args.minibatch_size]
                dist = actors.agent_dist(k, b_obs[mb, k], b_avail[mb, k])
                newlogprob = dist.log_prob(b_actions[mb, k])  # [M]
                mb_active = b_active[mb, k]
                entropy = masked_mean(dist.entropy(), mb_active)
                logratio = newlogprob - b_logprobs[mb, k]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = masked_mean((ratio - 1) - logratio, mb_active)
                    stats["clipfracs"].append(masked_mean(((ratio - 1.0).abs() > args.clip_coef).float(), mb_active))

                mb_adv = b_alloc[mb]  # [M, n]: each agent's allocated advantage
                if args.scale_alloc:
                    mb_adv = scale_allocation(mb_adv)
                pg_loss = -masked_mean(happo_surrogate(ratio, mb_adv[:, k], factor[mb], args.clip_coef), mb_active)
                actor_loss = pg_loss - args.ent_coef * entropy
                optimizers[k].zero_grad()
                actor_loss.backward()
                nn.utils.clip_grad_norm_(actors.agents[k].parameters(), args.max_grad_norm)
                optimizers[k].step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break
        with torch.no_grad():  # M *= this agent's new/old ratio on the whole batch
            newlogprob = actors.agent_dist(k, b_obs[:, k], b_avail[:, k]).log_prob(b_actions[:, k])
            factor = factor * (newlogprob - b_logprobs[:, k]).exp()
    stats.update(pg_loss=pg_loss, entropy=entropy, approx_kl=approx_kl)
    return factors, stats


class QNet(nn.Module):
    """One critic Q(s, a) on the state and the joint one-hot action. Its first layer is split,
    h1 = W_s s + sum_i e_i[a_i] + b, so that a coalition's own actions and the sampled actions of
    the others only meet in the sum of the per-agent action embeddings e_i [n, A, H]."""

    def __init__(self, state_dim, n_agents, n_actions, hidden):
        super().__init__()
        self.n, self.A = n_agents, n_actions
        self.state_in = layer_init(nn.Linear(state_dim, hidden))
        self.action_in = layer_init(nn.Linear(n_agents * n_actions, hidden))
        self.head = nn.Sequential(nn.Tanh(), layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                  layer_init(nn.Linear(hidden, 1), std=1.0))

    def agent_terms(self, actions):
        """Each agent's share of the first layer, e_i[a_i]: actions [..., n] -> [..., n, H]."""
        emb = self.action_in.weight.T.reshape(self.n, self.A, -1)  # [n, A, H]
        return emb[torch.arange(self.n, device=actions.device), actions]

    def forward(self, state, actions):
        """state [..., S], actions [..., n] long -> Q [...]."""
        onehot = nn.functional.one_hot(actions, self.A).flatten(-2).to(state.dtype)
        return self.head(self.state_in(state) + self.action_in(onehot)).squeeze(-1)


def mc_coalition_q(qs, state, actions, mc_actions, coalitions, samples_per_chunk=32, rows_per_block=4096):
    """Eq. (7), inner term, by Monte Carlo: (1/K) sum_k Q_j(s, a_C, a^k_{-C}) for each critic Q_j in
    `qs`, every sample and every coalition, batched over all of them.
    state [B, S], actions [B, n] (taken), mc_actions [B, K, n] (from the current policies),
    coalitions [m, n] bool -> [len(qs), B, m]. Three savings, all exact:
    - one critic evaluation per distinct joint action: with draw k, coalition C's joint action
      differs from the drawn one only at the agents of C whose draw is not their taken action
      (D_k), so coalitions with the same C & D_k share one row (at uniform policies over 5 actions
      that is 40% fewer rows; more as the policies sharpen);
    - the first layer by tables: h1 = base + sum_i (e_i[taken] if i in C else e_i[drawn]); split the
      agents into two halves: each half's sum takes one of 2^(n/2) values per draw, so h1 for a row
      is the sum of one row of each half's table (an embedding bag of two rows);
    - tanh(z) = 2 sigmoid(2z) - 1, the factors folded into the (small) tables and weights: the same
      function, but sigmoid costs a sixth of tanh on the CPU, and the activations are most of this pass.
    Samples go in chunks and rows through the critic in blocks that stay in the CPU cache."""
    B, K, n = mc_actions.shape[:3]
    m, dt, dev = coalitions.shape[0], state.dtype, state.device
    H = qs[0].action_in.out_features
    lo_n = n // 2
    pow2 = 1 << torch.arange(n, device=dev)
    code = (coalitions.long() * pow2).sum(1)  # [m]: each coalition as a bit mask

    def subsets(k):  # every subset of k agents as 0/1 rows [2^k, k]
        return ((torch.arange(2**k, device=dev)[:, None] >> torch.arange(k, device=dev)) & 1).to(dt)

    # both halves' subsets as one block-diagonal 0/1 matrix [2^lo_n + 2^hi_n, n]
    S = torch.block_diag(subsets(lo_n), subsets(n - lo_n))
    n_lo = 1 << lo_n
    critics = []
    for q in qs:  # with u = sigmoid(2 z): h = 2u - 1, so 2 z2 = 4 W2 u1 + 2 (b2 - W2 1) and Q = 2 w3.u2 + b3 - w3.1
        lin2, lin3 = q.head[1], q.head[3]
        critics.append((q, 2.0 * (q.state_in(state) + q.action_in.bias), 4.0 * lin2.weight.T,
                        2.0 * (lin2.bias - lin2.weight.sum(1)), 2.0 * lin3.weight[0], lin3.bias - lin3.weight[0].sum()))
    out = torch.empty(len(qs), B, m, dtype=dt, device=dev)
    samples_per_chunk = max(1, min(samples_per_chunk, 2**20 // (K << n)))  # a flag per (draw, C & D_k): <= 1 MB
    for lo in range(0, B, samples_per_chunk):  # chunks of the batch, not per-sample work
        sl = slice(lo, lo + samples_per_chunk)
        bK = mc_actions[sl].shape[0] * K
        differ = ((mc_actions[sl] != actions[sl, None]).long() * pow2).sum(-1).view(bK, 1)  # D_k as bit masks
        keys = (torch.arange(bK, device=dev).view(bK, 1) << n) + (code & differ)  # [bK, m]: (draw, C & D_k)
        present = torch.zeros(bK << n, dtype=torch.bool, device=dev)
        present[keys.flatten()] = True
        rows = present.nonzero().squeeze(1)  # [R]: the distinct (draw, C & D_k)
        row_of_key = (present.cumsum(0) - 1)[keys]  # [bK, m]
        draw, key = rows >> n, rows & (1 << n) - 1
        # each row's two table rows: its low half's subset, then its high half's, of its draw
        pair = torch.stack([key & n_lo - 1, n_lo + (key >> lo_n)], 1) + draw.unsqueeze(1) * len(S)  # [R, 2]
        for j, (q, base, w2, b2, w3, b3) in enumerate(critics):
            e_taken = 2.0 * q.agent_terms(actions[sl])  # [b, n, H], doubled for the sigmoid form
            e_mc = 2.0 * q.agent_terms(mc_actions[sl])  # [b, K, n, H]
            swap = e_taken.unsqueeze(1) - e_mc  # replacing a draw by the taken action
            # per (sample, draw): for every subset of each half, the sum over that half of the
            # taken embedding inside the subset and the drawn one outside; the state term goes
            # with the low half
            tables = torch.matmul(S, swap)  # [b, K, 2^lo_n + 2^hi_n, H]
            tables[:, :, :n_lo] += base[sl, None, None] + e_mc[:, :, :lo_n].sum(2, keepdim=True)
            tables[:, :, n_lo:] += e_mc[:, :, lo_n:].sum(2, keepdim=True)
            tables = tables.view(-1, H)
            vals = torch.empty(len(rows), dtype=dt, device=dev)
            for r in range(0, len(rows), rows_per_block):
                blk = slice(r, r + rows_per_block)
                u = nn.functional.embedding_bag(pair[blk], tables, mode="sum").sigmoid_()  # a fused gather-add
                torch.mv(torch.addmm(b2, u, w2).sigmoid_(), w3, out=vals[blk])
            out[j, sl] = vals[row_of_key].view(-1, K, m).mean(1) + b3
    return out


class TwinQ(nn.Module):
    """Clipped double Q: two independent critics; coalition values take their minimum (Eq. 7)."""

    def __init__(self, state_dim, n_agents, n_actions, hidden):
        super().__init__()
        self.qs = nn.ModuleList(QNet(state_dim, n_agents, n_actions, hidden) for _ in range(2))

    def forward(self, state, actions):
        return torch.stack([q(state, actions) for q in self.qs])  # [2, ...]

    def coalition_q(self, state, actions, policy, coalitions, mc_samples):
        """min_j (1/K) sum_k Q_j(s, a_C, a^k_-C): [B, m], a^k drawn from the policy (over [B, n])."""
        mc_actions = policy.sample((mc_samples,)).transpose(0, 1)  # [B, K, n]
        return mc_coalition_q(self.qs, state, actions, mc_actions, coalitions).amin(0)


class QuadraticQ(nn.Module):
    """CORA-PPO-QC (Sec. V-A): twin state-dependent quadratic forms in the actions,
    Q_j(s, x) = b(s) + sum_i <u_i(s), x_i> + sum_{i<j} x_i^T W_ij(s) x_j, with x_i the one-hot action.
    Being multilinear in independent agents' actions, E_{a_-C ~ pi}[Q(s, a_C, a_-C)] is Q with
    x_j = pi_j(.|o_j) for the agents outside C: coalition values in closed form, no sampling."""

    def __init__(self, state_dim, n_agents, n_actions, hidden):
        super().__init__()
        self.n, self.A = n_agents, n_actions
        pairs = torch.triu_indices(n_agents, n_agents, offset=1)
        self.register_buffer("pi", pairs[0])
        self.register_buffer("pj", pairs[1])
        P = pairs.shape[1]
        self.trunk = nn.ModuleList(nn.Sequential(layer_init(nn.Linear(state_dim, hidden)), nn.Tanh(),
                                                 layer_init(nn.Linear(hidden, hidden)), nn.Tanh()) for _ in range(2))
        self.out = nn.ModuleList(layer_init(nn.Linear(hidden, 1 + n_agents * n_actions + P * n_actions**2), std=0.1)
                                 for _ in range(2))

    def values(self, state, x):
        """state [B, S], x [B, ..., n, A] (one-hot actions or probabilities) -> [2, B, ...]."""
        n, A, P = self.n, self.A, self.pi.shape[0]
        out = []
        for trunk, head in zip(self.trunk, self.out):
            coef = head(trunk(state))  # [B, 1 + nA + P A^2]
            b, u, W = coef[:, :1], coef[:, 1 : 1 + n * A].view(-1, n, A), coef[:, 1 + n * A :].view(-1, P, A, A)
            xs = x.reshape(x.shape[0], -1, n, A)  # [B, R, n, A]
            quad = torch.einsum("brpa,bpac,brpc->br", xs[:, :, self.pi], W, xs[:, :, self.pj])
            out.append((b + torch.einsum("bia,bria->br", u, xs) + quad).view(x.shape[:-2]))
        return torch.stack(out)

    def forward(self, state, actions):
        """Q_j(s, a) for taken actions [B, n] -> [2, B]. With one-hot x only b, u_i[a_i] and
        W_ij[a_i, a_j] matter: Q = sum of those 1 + n + P head outputs = (sum of their weight rows) . h
        + their biases; one embedding bag sums the rows without materializing [B, 1 + n + P, H]."""
        n, A = self.n, self.A
        P = self.pi.shape[0]
        agents = torch.arange(n, device=actions.device)
        idx = torch.cat([torch.zeros_like(actions[:, :1]),  # b
                         1 + agents * A + actions,  # u_i[a_i]
                         1 + n * A + torch.arange(P, device=actions.device) * A * A
                         + actions[:, self.pi] * A + actions[:, self.pj]], 1)  # W_ij[a_i, a_j]
        out = []
        for trunk, head in zip(self.trunk, self.out):
            rows = nn.functional.embedding_bag(idx, torch.cat([head.weight, head.bias[:, None]], 1), mode="sum")
            out.append((rows[:, :-1] * trunk(state)).sum(-1) + rows[:, -1])
        return torch.stack(out)

    def coalition_q(self, state, actions, policy, coalitions, mc_samples=None):
        """min_j Q_j(s, x) with x_i = onehot(a_i) for i in C, pi_i otherwise: [B, m], exact.
        Each x_i is one of two vectors, so each term of Q takes one of 2 (linear) or 4 (pairwise)
        values per sample; every coalition's Q is a fixed 0/1 combination of them: one GEMM."""
        dt = state.dtype
        X = torch.stack([policy.probs.to(dt), nn.functional.one_hot(actions, self.A).to(dt)], 2)  # [B, n, 2, A]
        inside = nn.functional.one_hot(coalitions.long(), 2).to(dt)  # [m, n, 2]: (outside, inside) of C
        pick_lin = inside.flatten(1)  # [m, 2n]
        pick_quad = (inside[:, self.pi, :, None] * inside[:, self.pj, None, :]).flatten(1)  # [m, 4P]
        n, A, P = self.n, self.A, self.pi.shape[0]
        out = []
        for trunk, head in zip(self.trunk, self.out):
            coef = head(trunk(state))
            b, u, W = coef[:, :1], coef[:, 1 : 1 + n * A].view(-1, n, A), coef[:, 1 + n * A :].view(-1, P, A, A)
            lin = torch.einsum("bia,bisa->bis", u, X)  # [B, n, 2]
            quad = torch.einsum("bpsa,bpac,bptc->bpst", X[:, self.pi], W, X[:, self.pj])  # [B, P, 2, 2]
            out.append(b + lin.flatten(1) @ pick_lin.T + quad.flatten(1) @ pick_quad.T)
        return torch.stack(out).amin(0)


class Critic(nn.Module):
    """Centralized value V(s): state [..., state_dim] -> [...]."""

    def __init__(self, state_dim, hidden):
        super().__init__()
        self.net = mlp(state_dim, hidden, 1, out_std=1.0)

    def forward(self, state):
        return self.net(state).squeeze(-1)


def evaluate(actor, env_id, episodes, seed, device):
    """Greedy evaluation: team return (and win) of the first episode of each of `episodes` envs.
    Same seed as training: for seeded games (matrix, diff) the seed picks the game itself."""
    env = make_env(env_id, episodes, seed, device, action_type="discrete")
    step = env.reset()
    returns = torch.full((episodes,), float("nan"), device=device)
    wins = torch.zeros(episodes, device=device)
    with torch.no_grad():
        while returns.isnan().any():
            step = env.step(actor(step.obs, step.avail_actions).argmax(-1))
            first = step.episodes.done & returns.isnan()
            returns = torch.where(first, step.episodes.ret, returns)
            if step.episodes.win is not None:
                wins = torch.where(first, step.episodes.win.float(), wins)
    env.close()
    return returns, wins if env.spec.has_win else None


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    args = tyro.cli(Args)
    args.batch_size = args.num_envs * args.num_steps
    if args.num_minibatches < 1 or args.batch_size % args.num_minibatches:
        fail(f"--num-minibatches ({args.num_minibatches}) must divide num_envs*num_steps ({args.batch_size})")
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        fail(f"--total-timesteps ({args.total_timesteps}) is less than one rollout ({args.batch_size} steps)")
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.cuda and device.type == "cpu":
        print("warning: --cuda given but CUDA is not available; running on the CPU", file=sys.stderr)

    # env setup
    try:
        envs = make_env(args.env_id, args.num_envs, args.seed, device, action_type="discrete")
    except EnvError as e:
        fail(str(e))
    if args.capture_video:
        fail(f"--capture-video: {args.env_id} cannot render videos yet")
    spec = envs.spec
    n, A = spec.n_agents, spec.n_actions
    if not 2 <= n <= 16:
        fail(f"CORA needs 2 to 16 agents (coalitions are enumerated as bit masks); {args.env_id} has {n}")
    if args.mc_samples < 1 or args.core_reg < 0:
        fail("--mc-samples must be >= 1 and --core-reg >= 0")
    if args.q_epochs < 1 or (args.q_learning_rate is not None and args.q_learning_rate <= 0):
        fail("--q-epochs must be >= 1 and --q-learning-rate > 0")
    if not 1 <= args.coalition_sets <= args.batch_size:
        fail(f"--coalition-sets must be in 1..num_envs*num_steps ({args.batch_size}), got {args.coalition_sets}")
    if args.q_learning_rate is None:  # Table V gives one critic rate: V's and the Q critics'
        args.q_learning_rate = args.critic_learning_rate
    m = args.num_coalitions if args.num_coalitions > 0 else 2 ** (n - 1) - 1
    if args.qp_solver == "osqp":
        try:
            import osqp  # noqa: F401
            import scipy  # noqa: F401
        except ImportError:
            fail("--qp-solver osqp needs OSQP and SciPy: pip install osqp scipy")


    if args.track:
        try:
            import wandb
        except ImportError:
            fail("--track needs Weights and Biases: pip install wandb")
        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True)
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    actors = Actors(spec.obs_dim, n, A, args.hidden_dim).to(device)
    critic = Critic(spec.state_dim, args.hidden_dim).to(device)
    value_rms = RunningMeanStd().to(device)
    actor_optimizers = [torch.optim.Adam(net.parameters(), lr=args.learning_rate, eps=1e-5) for net in actors.agents]
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate, eps=1e-5)
    twin_q = (TwinQ if args.critic == "mc" else QuadraticQ)(spec.state_dim, n, A, args.hidden_dim).to(device)
    q_optimizer = torch.optim.Adam(twin_q.parameters(), lr=args.q_learning_rate, eps=1e-5)
    coalition_gen = torch.Generator().manual_seed(args.seed)
    every_coalition = all_coalitions(n, device) if n <= 12 else None  # for core/violation_ratio
    has_truth = envs.reward_of is not None and args.truth_samples > 0 and A**n <= 4096  # for core/adv_corr

    def value_of(state):
        """V(s) in return units (denormalized when value normalization is on)."""
        v = critic(state)
        return value_rms.denormalize(v) if args.value_norm else v

    def coalition_adv_of(state, actions, policy, coalitions):
        """Eq. (7): A_C = min_j E[Q_j(s, a_C, a_-C)] - V(s) in return units [B, m]; the Q critics
        share V's target normalization (affine, so it commutes with the expectation)."""
        q = twin_q.coalition_q(state, actions, policy, coalitions, args.mc_samples)
        q = value_rms.denormalize(q) if args.value_norm else q
        return q - value_of(state).unsqueeze(-1)

    # storage
    T, E = args.num_steps, args.num_envs
    obs = torch.zeros((T, E, n, spec.obs_dim), device=device)
    state = torch.zeros((T, E, spec.state_dim), device=device)
    avail = torch.zeros((T, E, n, A), dtype=torch.bool, device=device)
    active = torch.zeros((T, E, n), dtype=torch.bool, device=device)  # alive agents
    actions = torch.zeros((T, E, n), dtype=torch.long, device=device)
    logprobs = torch.zeros((T, E, n), device=device)
    rewards = torch.zeros((T, E), device=device)
    dones = torch.zeros((T, E), device=device)
    values = torch.zeros((T, E), device=device)

    def save_checkpoint():
        path = f"runs/{run_name}/{args.exp_name}.cleanmarl_model"
        torch.save({"actors": actors.state_dict(), "critic": critic.state_dict(), "twin_q": twin_q.state_dict(),
                    "value_rms": value_rms.state_dict(), "args": vars(args)}, path)
        print(f"model saved to {path}")

    global_step = 0
    start_time = time.time()
    last_print = 0.0
    mean_return = float("nan")  # of the episodes that ended in the latest rollout that had any
    step = envs.reset()
    next_done = torch.zeros(E, device=device)
    finished = True
    try:
        for iteration in range(1, args.num_iterations + 1):
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                for optimizer in actor_optimizers:
                    optimizer.param_groups[0]["lr"] = frac * args.learning_rate
                critic_optimizer.param_groups[0]["lr"] = frac * args.critic_learning_rate
                if args.anneal_q_lr:
                    q_optimizer.param_groups[0]["lr"] = frac * args.q_learning_rate

            # ---- rollout ------------------------------------------------------------------
            ep_return_sum = torch.zeros((), device=device)
            ep_length_sum = torch.zeros((), device=device)
            ep_win_sum = torch.zeros((), device=device)
            ep_count = torch.zeros((), device=device)
            for t in range(T):
                global_step += E
                obs[t], state[t], avail[t], dones[t] = step.obs, step.state, step.avail_actions, next_done
                active[t] = step.active
                with torch.no_grad():
                    dist = actors.dist(step.obs, step.avail_actions)
                    action = dist.sample()  # [E, n]
                    logprobs[t] = dist.log_prob(action)
                    values[t] = value_of(step.state)
                actions[t] = action
                step = envs.step(action)
                rewards[t] = step.reward
                if step.truncated.any():  # bootstrap a truncated episode from its final state
                    with torch.no_grad():
                        rewards[t] += args.gamma * value_of(step.final_state) * step.truncated
                next_done = (step.terminated | step.truncated).float()
                ep = step.episodes
                ep_count += ep.done.sum()
                ep_return_sum += (ep.ret * ep.done).sum()
                ep_length_sum += (ep.length * ep.done).sum()
                if ep.win is not None:
                    ep_win_sum += ep.win.sum()

            # ---- GAE ----------------------------------------------------------------------
            with torch.no_grad():
                next_value = value_of(step.state)
                advantages = compute_gae(rewards, values, dones, next_value, next_done,
                                         args.gamma, args.gae_lambda)  # [T, E]
                returns = advantages + values
                # Alg. 1 l. 11: y = r + gamma V(s') for the Q critics (r already bootstraps truncations)
                next_values = torch.cat([values[1:], next_value.unsqueeze(0)])
                next_nonterminal = 1.0 - torch.cat([dones[1:], next_done.unsqueeze(0)])
                q_targets = rewards + args.gamma * next_nonterminal * next_values
                if args.value_norm:
                    value_rms.update(returns)
                    old_v = value_rms.normalize(values)
                    targets = value_rms.normalize(returns)
                    q_targets = value_rms.normalize(q_targets)
                else:
                    old_v, targets = values, returns

            # ---- HAPPO update: the actors one after another --------------------------------
            b_obs, b_state, b_avail = obs.flatten(0, 1), state.flatten(0, 1), avail.flatten(0, 1)
            b_active = active.flatten(0, 1)  # [B, n]
            b_actions, b_logprobs = actions.flatten(0, 1), logprobs.flatten(0, 1)  # [B, n]
            b_advantages = advantages.flatten()  # [B]: A_N, the grand coalition's advantage
            b_old_v, b_targets, b_q_targets = old_v.flatten(), targets.flatten(), q_targets.flatten()

            # ---- credit assignment: coalition advantages (Eq. 7) and the core QP (Eq. 24) ----
            with torch.no_grad():
                # Alg. 1 l. 13: a fresh draw of coalitions for each of `coalition_sets` blocks of
                # timesteps (samples are b = t * E + e, so a block of samples is a block of timesteps)
                blocks = torch.arange(args.batch_size, device=device).tensor_split(args.coalition_sets)
                coalitions = torch.stack([sample_coalitions(n, m, coalition_gen, device) for _ in blocks])  # [G, m, n]
                coalition_adv = torch.zeros(args.batch_size, coalitions.shape[1], device=device)  # [B, m]
                b_alloc, eps = torch.zeros(args.batch_size, n, device=device), torch.zeros(args.batch_size, device=device)
                solve = core_allocation if args.qp_solver == "ipm" else core_allocation_osqp
                coalition_s = qp_s = 0.0
                for blk, C in zip(blocks, coalitions):  # each block marginalizes over the current policies
                    t0 = time.perf_counter()
                    coalition_adv[blk] = coalition_adv_of(b_state[blk], b_actions[blk], actors.dist(b_obs[blk], b_avail[blk]), C)
                    t1 = time.perf_counter()
                    b_alloc[blk], eps[blk] = solve(C, coalition_adv[blk], b_advantages[blk], args.core_reg)  # [b, n]
                    coalition_s, qp_s = coalition_s + t1 - t0, qp_s + time.perf_counter() - t1
                coalitions_of = coalitions.repeat_interleave(torch.tensor([len(b) for b in blocks], device=device), 0)  # [B, m, n]
                violation_ratio = float("nan")
                if every_coalition is not None and args.violation_samples > 0:
                    # a diagnostic: its Monte-Carlo draws must not move the training's random stream
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        k = min(args.violation_samples, args.batch_size)
                        full_adv = coalition_adv_of(b_state[:k], b_actions[:k], actors.dist(b_obs[:k], b_avail[:k]),
                                                    every_coalition)
                        covered = b_alloc[:k] @ every_coalition.to(b_alloc.dtype).T  # sum_{i in C} A_i
                        violation_ratio = (covered < full_adv - eps[:k, None] - 1e-6).float().mean().item()
                # how often the core departs from the equal split (= MAPPO), and, where the env
                # knows the truth, how closely Eq. (7)'s estimate follows the true A_C
                equal_split = (b_alloc - b_advantages[:, None] / n).abs().amax(1) <= 1e-5 * b_advantages.abs().clamp(min=1)
                adv_corr = float("nan")
                if has_truth:
                    k = min(args.truth_samples, args.batch_size)
                    truth = true_coalition_adv(envs.reward_of, b_state[:k], b_actions[:k], actors.dist(b_obs[:k], b_avail[:k]).probs,
                                               coalitions_of[:k])
                    adv_corr = torch.corrcoef(torch.stack([coalition_adv[:k].flatten(), truth.flatten()]))[0, 1].item()
            perm = torch.randperm(n).tolist()  # a fresh agent order at every update
            factors, stats = sequential_actor_update(actors, actor_optimizers, perm, b_obs, b_avail, b_active,
                                                     b_actions, b_logprobs, b_alloc, args)
            pg_loss, entropy, approx_kl, clipfracs = stats["pg_loss"], stats["entropy"], stats["approx_kl"], stats["clipfracs"]

            # ---- value critic, after the actors (Alg. 1 l. 24) -----------------------------
            for epoch in range(args.update_epochs):
                b_inds = torch.randperm(args.batch_size, device=device)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb = b_inds[start : start + args.minibatch_size]
                    v_loss = value_loss(critic(b_state[mb]), b_old_v[mb], b_targets[mb],
                                        args.clip_coef, args.clip_vloss, args.huber_delta)
                    critic_optimizer.zero_grad()
                    v_loss.backward()
                    nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
                    critic_optimizer.step()

            # ---- Q critics (Alg. 1 l. 25): both regress on y, on their own schedule -------------
            for epoch in range(args.q_epochs):
                b_inds = torch.randperm(args.batch_size, device=device)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb = b_inds[start : start + args.minibatch_size]
                    q_loss = ((twin_q(b_state[mb], b_actions[mb]) - b_q_targets[mb]) ** 2).mean(-1).sum()
                    q_optimizer.zero_grad()
                    q_loss.backward()
                    nn.utils.clip_grad_norm_(twin_q.parameters(), args.max_grad_norm)
                    q_optimizer.step()

            # ---- logging ------------------------------------------------------------------
            y_pred, y_true = values.flatten(), returns.flatten()
            var_y = y_true.var()
            explained_var = float("nan") if var_y == 0 else float(1 - (y_true - y_pred).var() / var_y)
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("charts/learning_rate", actor_optimizers[0].param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/critic_learning_rate", critic_optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/q_learning_rate", q_optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
            writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
            writer.add_scalar("losses/entropy", entropy.item(), global_step)
            writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
            writer.add_scalar("losses/clipfrac", torch.stack(clipfracs).mean().item(), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            writer.add_scalar("happo/last_agent_factor_std", factors[perm[-1]].std().item(), global_step)
            writer.add_scalar("losses/q_loss", q_loss.item(), global_step)
            writer.add_scalar("core/epsilon", eps.mean().item(), global_step)
            writer.add_scalar("core/violation_ratio", violation_ratio, global_step)
            writer.add_scalar("core/equal_split_frac", equal_split.float().mean().item(), global_step)
            writer.add_scalar("core/adv_corr", adv_corr, global_step)
            writer.add_scalar("core/alloc_std", b_alloc.std().item(), global_step)
            writer.add_scalar("core/coalition_ms", 1000 * coalition_s, global_step)
            writer.add_scalar("core/qp_ms", 1000 * qp_s, global_step)
            count = int(ep_count)
            if count:
                mean_return = ep_return_sum.item() / count
                writer.add_scalar("charts/episodic_return", mean_return, global_step)
                writer.add_scalar("charts/episodic_length", ep_length_sum.item() / count, global_step)
                if spec.has_win:
                    writer.add_scalar("charts/win_rate", ep_win_sum.item() / count, global_step)
            now = time.time()
            if now - last_print > 2.0 or iteration == args.num_iterations:
                last_print = now
                print(f"iter {iteration}/{args.num_iterations} step {global_step}/{args.total_timesteps} "
                      f"episodic_return={mean_return:.3f} SPS={sps}", flush=True)
    except KeyboardInterrupt:
        finished = False
        print("interrupted: flushing logs" + (" and saving the model" if args.save_model else ""), file=sys.stderr)
    finally:
        if args.save_model:
            save_checkpoint()
        envs.close()
        writer.flush()

    if args.save_model and finished:
        eval_returns, eval_wins = evaluate(actors, args.env_id, args.eval_episodes, args.seed, device)
        for i, r in enumerate(eval_returns.tolist()):
            writer.add_scalar("eval/episodic_return", r, i)
        summary = {"eval_return_mean": eval_returns.mean().item(), "eval_episodes": args.eval_episodes,
                   "optimal_return": spec.optimal_return}
        if eval_wins is not None:
            summary["eval_win_rate"] = eval_wins.mean().item()
            writer.add_scalar("eval/win_rate", summary["eval_win_rate"], global_step)
        with open(f"runs/{run_name}/eval.json", "w") as f:
            json.dump(summary, f)
        print("greedy evaluation: " + json.dumps(summary))
    writer.close()
    if args.track:
        wandb.finish()
    if not finished:
        sys.exit(130)
