"""CORA-HAPPO for continuous actions (a diagonal Gaussian policy per agent): core credit assignment in HAPPO's sequential update.

Papers: Ji, Xu, Jia, Duan, Qiu, Ge and Li, "Cooperative Game-Theoretic Credit Assignment for Multi-Agent
Policy Gradients via the Core" (CORA; a preprint, no venue stated; Alg. 1)
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
Defaults follow Table V of the CORA paper for differential games (this script's main family).
Actions are sampled from N(mu_i(o_i), exp(log_std_i)) unbounded; the env clips them to its
bounds. An agent's ratio is the product over its action dims.

Run:  python cleanmarl/cora_happo_continuous.py --env-id diff:2agents
      python cleanmarl/cora_happo_continuous.py --env-id diff:5agents --critic quadratic

What this file implements, and where:
  GAE for the grand coalition A_N (Alg. 1 l. 19)        -> `compute_gae`
  twin critics Q_1, Q_2 on y = r + gamma V(s') (l. 11, 25) -> `TwinQ` / `QuadraticQ`, "Q critics" block
                                   (--q-epochs after the actor and V updates, in Alg. 1's order)
  m sampled coalitions (l. 13; --coalition-sets per block of timesteps) -> `sample_coalitions`
  Eq. (7), A_C = min_j E[Q_j(s, a_C, a_-C)] - V(s) in return units -> `coalition_advantages`
  Eq. (7), Monte-Carlo: E[Q_j] ~ 1/K sum_k Q_j(s, a_C, a^k_-C)  -> `mc_coalition_q`
  Eq. (7), quadratic critic (CORA-PPO-QC, Sec. V-A): closed form with the mean mu_j for j outside C
                                                         -> `QuadraticQ.coalition_q`
  Eq. (24), regularized least epsilon-core QP, batched   -> `core_allocation`
  the controls: --allocation equal (A_N / n), --coalition-values oracle, --grand-advantage q
                  (Sec. III-A's A_N = min_j Q_j(s, a) - V(s))  -> `allocate`, `grand_q_advantage`
  allocation scaling that keeps the core constraints     -> `scale_allocation`
  core/adv_corr's truth, for envs whose next state ignores the actions -> `true_coalition_adv`
  the credit's diagnostics (core/violation_ratio, equal split, adv_corr) -> `credit_diagnostics`
  HAPPO surrogate with the allocated A_i, M * min(r A_i, clip(r) A_i) -> `happo_surrogate`
  sequential update in a random order, M *= r_{i_k}    -> `sequential_actor_update`
  clipped value loss (Huber), value normalization      -> `value_loss`, `RunningMeanStd`

Shape convention: [T, E, n, ...] = (time, envs, agents, features); B = T * E samples;
m coalitions, K Monte-Carlo samples, coalitions as bool masks [m, n].
"""

import copy
import importlib.util
import json
import os
import pickle
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.distributions.normal import Normal
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file
from cleanmarl.envs import EnvError, make_env  # noqa: E402

# torch.distributions checks its arguments by reading device values on the host: a GPU sync per call
torch.distributions.Distribution.set_default_validate_args(False)


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
    """if toggled, record the first episode of each greedy evaluation to videos/{run_name}/ (vmas, mamujoco, smax)"""
    save_model: bool = False
    """if toggled, save a checkpoint to runs/{run_name}/ at the end and evaluate it greedily (an interrupted run always saves one)"""
    checkpoint: Optional[str] = None
    """a checkpoint this script wrote: resume its run (same run folder), or evaluate it with --eval-only"""
    eval_only: bool = False
    """if toggled, evaluate --checkpoint greedily (eval.json next to it) and exit without training"""
    eval_interval: int = 0
    """env steps between greedy evaluations during training, logged as eval/...; 0: none"""
    eval_episodes: int = 10
    """number of greedy evaluation episodes (one per parallel env)"""
    threads: int = 1
    """torch CPU threads (1 is fastest and stable on small shared machines)"""

    # Environment
    env_id: str = "diff:2agents"
    """the id of the environment, `family:scenario` (see README)"""
    total_timesteps: int = 100_000
    """total environment steps (summed over parallel envs)"""
    num_envs: int = 4
    """the number of parallel environments"""
    num_steps: int = 50
    """the number of steps per environment per rollout"""

    # PPO
    learning_rate: float = 5e-5
    """the learning rate of each agent's actor"""
    critic_learning_rate: float = 5e-4
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
    clip_coef: float = 0.2
    """the PPO surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggle clipping of the value loss around the rollout's values (same coefficient)"""
    value_norm: bool = True
    """toggle normalization of value targets by running statistics"""
    huber_delta: float = 10.0
    """delta of the Huber value loss; 0 uses the squared error"""
    ent_coef: float = 1e-4
    """the entropy bonus coefficient"""
    max_grad_norm: float = 10.0
    """the maximum gradient norm of the actor and of the critic"""
    target_kl: Optional[float] = None
    """stop an agent's epochs early once its approximate KL exceeds this"""
    hidden_dim: int = 64
    """width of the hidden layers of actor and critics"""
    num_layers: int = 2
    """hidden layers of the actor and value-critic MLPs (on-policy's layer_N = 1, ILVF Table 1's, is 2: its fc1 and layer_N more)"""
    activation: Literal["tanh", "relu"] = "tanh"
    """the hidden layers' activation (ILVF Table 1: relu)"""
    feature_norm: bool = False
    """toggle a LayerNorm over each MLP's input (on-policy's use_feature_normalization; ILVF Table 1: on)"""
    layer_norm: bool = False
    """toggle a LayerNorm after every hidden activation (on-policy's MLPLayer always has one; ILVF Table 1: on)"""
    init_log_std: float = 0.0
    """initial log standard deviation of the Gaussian policies (in action units)"""

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
    scale_alloc: bool = True
    """toggle dividing the allocations by their common std (no per-agent mean shift: the core constraints survive)"""
    allocation: Literal["core", "equal"] = "core"
    """the credit: "core" gives agent i its share A_i of Eq. (24)'s least epsilon-core; "equal" gives every agent A_N / n through the same pipeline (the control that isolates the credit: same actors, critics, Q epochs, scaling and random streams)"""
    coalition_values: Literal["learned", "oracle"] = "learned"
    """the A_C that Eq. (24) takes: "learned" Eq. (7) from the Q critics; "oracle" the exact A_C from the env's own reward (envs whose next state ignores the actions: matrix:, diff:), a control; the critics' pass still runs, so the random streams stay the learned arm's"""
    grand_advantage: Literal["gae", "q"] = "gae"
    """A_N, the grand coalition's advantage: "gae" Alg. 1 l. 19's GAE; "q" Sec. III-A's min_j Q_j(s, a) - V(s) from the twin critics"""
    violation_samples: int = 16
    """samples per update on which core/violation_ratio checks all 2^n-2 coalitions (0: off; n <= 12); a diagnostic, kept small: with Monte Carlo its coalition pass costs (2^n-2)/m * samples/batch of the main one (at 64 samples it outcost the main pass on MaMuJoCo's 200-sample batches)"""
    truth_samples: int = 16
    """samples per update on which core/adv_corr compares the estimated A_C with the true one (1024 draws of the env's reward each), where the env gives it (differential games; 0: off)"""

    # Q critics (Alg. 1 l. 25)
    q_epochs: Optional[int] = None
    """epochs of Q-critic regression per update, run after the actor and V updates (Alg. 1's order), with --num-minibatches minibatches each (default: ceil(Q_STEPS / --num-minibatches), i.e. 50 Adam steps: 50 epochs of the full batch, 13 of 4 minibatches)"""
    q_learning_rate: Optional[float] = None
    """the learning rate of the twin Q critics (default: --critic-learning-rate, Table V's critic rate)"""
    anneal_q_lr: bool = False
    """toggle linear annealing of the Q critics' learning rate to 0 (off: they keep tracking the moving policy)"""
    q_stop: float = 0.0
    """stop a rollout's Q epochs early once --q-patience epochs lowered the Q loss by less than this fraction of it (0: always all --q-epochs)"""
    q_patience: int = 5
    """the epochs over which --q-stop compares the Q loss"""

    # filled in at start (never set by hand; hidden from --help)
    batch_size: tyro.conf.Suppress[int] = 0
    """env-steps per rollout (num_envs * num_steps)"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """env-steps per minibatch"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """number of rollouts"""
    defaults_from: tyro.conf.Suppress[str] = ""
    """the table row the unset hyperparameters came from (FAMILY_DEFAULTS)"""


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


# Eq. (24): regularized least epsilon-core,
#   min_{eps >= 0, A} eps + reg * sum_i (A_i - A_N / n)^2  s.t.  sum_i A_i = A_N,  sum_{i in C} A_i >= A_C - eps.
def core_allocation(coalitions, coalition_adv, grand_adv, reg, max_iters=50, chunk=512):
    """Eq. (24) for B samples sharing one coalition set, all at once: a primal-dual interior point
    that finishes with an exact solve of the rows that bind.
    coalitions [m, n] bool, coalition_adv [B, m], grand_adv [B] -> (alloc [B, n], eps [B]).

    Efficiency is built in: A = A_N/n + Z y, Z [n, n-1] an orthonormal basis of the vectors that sum
    to 0. Over z = (y, eps) the problem is then, with a row of G per coalition and one for eps >= 0,
        min c.z + z'Qz/2  s.t.  G z >= h,   c = (0,..,0, 1),  Q = diag(2 reg,.., 2 reg, 0),
        G_C = (M_C Z, 1), h_C = A_C - |C| A_N/n;   G_eps = (0,..,0, 1), h_eps = 0,
    whose optimum, with slacks s = G z - h and multipliers lam, solves the KKT conditions
        r_d = Q z + c - G'lam = 0,   r_p = G z - s - h = 0,   s * lam = 0,   s, lam >= 0.
    Interior point: keep s, lam > 0 and take Newton steps towards s * lam = sigma mu (mu = mean of
    s * lam). With lam ds + s dlam = r_c (r_c = sigma mu - s lam) and ds = G dz + r_p this leaves
        (Q + G'WG) dz = G'(r_c / s - W r_p) - r_d,   W = diag(lam / s),   dlam = (r_c - lam ds) / s:
    an n x n positive definite system per sample, a batched Cholesky. Mehrotra's predictor-corrector
    picks sigma: an affine step (sigma = 0) that would shrink mu to mu_aff sets sigma = (mu_aff / mu)^3
    and lends its second-order term -ds dlam to r_c. Steps go 0.99 of the way to s, lam >= 0.
    Exact finish: near the optimum W grows without bound and rounding stalls the steps, so once
    mu < 1e-6 every step also solves the rows with lam > s as equalities (augmented Lagrangian:
    (Q + rho G_a'G_a) z = G_a'(lam_a + rho h_a) - c, then lam_a -= rho (G_a z - h_a), three times from
    the interior point's lam). A sample leaves the batch when that answer meets every KKT condition
    to 1e-9, or else once mu < 1e-13. Each sample's h is divided by its largest |h| (and Q multiplied
    by it: the same problem in those units), so that one tolerance serves all. Chunks of `chunk`
    samples, which stay in the CPU cache, run a quarter faster than one batch."""
    if len(coalition_adv) > chunk:
        parts = [core_allocation(coalitions, v, a, reg, max_iters, chunk)
                 for v, a in zip(coalition_adv.split(chunk), grand_adv.split(chunk))]
        return tuple(torch.cat(x) for x in zip(*parts))
    dt, dev = torch.float64, coalition_adv.device
    B, m = coalition_adv.shape
    n = coalitions.shape[-1]
    M, AN = coalitions.to(dt), grand_adv.to(dt)
    Z = torch.linalg.qr(torch.eye(n, dtype=dt, device=dev) - 1.0 / n)[0][:, : n - 1]  # [n, n-1], 1'Z = 0
    c = torch.zeros(n, dtype=dt, device=dev)
    c[-1] = 1.0
    G = torch.cat([torch.cat([M @ Z, torch.ones(m, 1, dtype=dt, device=dev)], 1), c[None]])  # [m+1, n]
    GG = torch.einsum("ki,kj->kij", G, G).flatten(1)  # [m+1, n*n]: each row's g g'
    h = torch.cat([coalition_adv.to(dt) - M.sum(1) * AN[:, None] / n, torch.zeros(B, 1, dtype=dt, device=dev)], 1)
    scale = h.abs().amax(1, keepdim=True).clamp(min=1e-30)  # [B, 1]
    h = h / scale
    q = 2.0 * reg * scale * (1.0 - c)  # [B, n]: the diagonal of Q in these units
    rho = (1e4 * q.amax(1, keepdim=True)).clamp(min=1.0)  # the equality penalty, far above Q's curvature

    def cholesky(W, jitter=0.0):  # of Q + G'WG: [b, n, n]
        H = torch.diag_embed(q) + (W @ GG).view(-1, n, n)
        H.diagonal(dim1=1, dim2=2).mul_(1.0 + jitter)
        return torch.linalg.cholesky_ex(H)

    def max_step(ds, dlam):  # the largest a in (0, 1] that keeps s + a ds >= 0 and lam + a dlam >= 0
        return 1.0 / (-torch.cat([ds / s, dlam / lam], 1).amin(1, keepdim=True)).clamp(min=1.0)

    z = torch.zeros(B, n, dtype=dt, device=dev)  # start inside: the equal split, eps above every h
    z[:, -1] = 1.0 + h.amax(1).clamp(min=0.0)
    s = z @ G.T - h
    lam = torch.ones_like(s)
    z_out, live = z.clone(), torch.arange(B, device=dev)  # live: the samples still iterating
    for _ in range(max_iters):
        r_d, r_p, mu = q * z + c - lam @ G, z @ G.T - s - h, (s * lam).mean(1, keepdim=True)
        if bool((mu < 1e-6).any()):  # exact finish: the rows that look binding, as equalities
            D = rho * (lam > s)
            L, bad = cholesky(D)
            lam_a = lam * (lam > s)
            for _step in range(3):
                z_a = torch.cholesky_solve(((lam_a + D * h) @ G - c).unsqueeze(-1), L).squeeze(-1)
                r = z_a @ G.T - h
                lam_a = lam_a - D * r
            kkt = torch.cat([(q * z_a + c - lam_a @ G).abs(), -r, (r * (D > 0)).abs(), -lam_a], 1).amax(1)
            exact = (bad == 0) & (kkt <= 1e-9)
            z_out[live] = torch.where(exact[:, None], z_a, z)
            keep = ~exact & (mu[:, 0] >= 1e-13)  # the others leave the batch
            live, z, s, lam, h, q, rho, r_d, r_p, mu = (x[keep] for x in (live, z, s, lam, h, q, rho, r_d, r_p, mu))
            if not len(live):
                break
        W = lam / s
        L, bad = cholesky(W)
        if bool(bad.any()):  # late on, rounding can make it look indefinite: a touch more diagonal there
            L = torch.where(bad[:, None, None] == 0, L, cholesky(W, 1e-12)[0])

        def newton(r_c):
            dz = torch.cholesky_solve(((r_c / s - W * r_p) @ G - r_d).unsqueeze(-1), L).squeeze(-1)
            ds = dz @ G.T + r_p
            return dz, ds, (r_c - lam * ds) / s

        dz, ds, dlam = newton(-s * lam)  # predictor
        a = max_step(ds, dlam)
        sigma = (((s + a * ds) * (lam + a * dlam)).mean(1, keepdim=True) / mu) ** 3
        dz, ds, dlam = newton(sigma * mu - s * lam - ds * dlam)  # corrector
        a = 0.99 * max_step(ds, dlam)
        z, s, lam = z + a * dz, s + a * ds, lam + a * dlam
    z_out[live] = z  # (out of iterations: the rest as they stand)
    A = AN[:, None] / n + (z_out[:, :-1] * scale) @ Z.T
    eps = (coalition_adv.to(dt) - A @ M.T).amax(1).clamp(min=0.0)
    return A.to(coalition_adv.dtype), eps.to(coalition_adv.dtype)


def coalition_advantages(coalition_q, value, value_rms=None):
    """Eq. (7): A_C = min_j E[Q_j(s, a_C, a_-C)] - V(s), in return units. coalition_q [B, m] is the
    twin critics' min_j E[Q_j] (`coalition_q`); they learn in V's normalized units, so value_rms
    (when value normalization is on) maps them back (affine: it commutes with the expectation).
    value [B] is V(s) in return units -> [B, m]."""
    if value_rms is not None:
        coalition_q = value_rms.denormalize(coalition_q)
    return coalition_q - value.unsqueeze(-1)


def grand_q_advantage(q_taken, value, value_rms=None):
    """Sec. III-A's reading of A_N (--grand-advantage q): min_j Q_j(s, a) - V(s) in return units,
    from the twin critics at the taken actions q_taken [2, B] and V(s) [B] -> [B]."""
    return coalition_advantages(q_taken.min(0).values.unsqueeze(-1), value, value_rms).squeeze(-1)


def allocate(coalitions, coalition_adv, grand_adv, reg, rule="core"):
    """The credit (Alg. 1 l. 20-21): Eq. (24)'s core allocation ([B, n], eps [B]), or with rule
    "equal" the control that gives every agent A_N / n (eps 0) and nothing else."""
    if rule == "equal":
        n = coalitions.shape[-1]
        return grand_adv.unsqueeze(-1).expand(-1, n) / n, torch.zeros_like(grand_adv)
    return core_allocation(coalitions, coalition_adv, grand_adv, reg)


def scale_allocation(alloc):
    """Divide the allocations [M, n] by one common std. A shared positive scale keeps efficiency
    and every core constraint (both sides scale alike); a per-agent mean shift would not."""
    return alloc / (alloc.std() + 1e-8)


# Unset flags take the row of the env's family in CORA Table V (epochs: its shared 10). Args'
# own defaults are the differential-game row. A flag set on the command line always wins; the
# run prints the row it used and records it as `defaults_from`.
# Neither table gives minibatches: 4 on the rows of 16 or more envs, chosen on SMAX 2s3z and held for VMAS
# and GRF (docs/parity.md); 1 (the full batch, on-policy's default) on the 4-env rows, as their paper runs here.
FAMILY_COLUMNS = ("learning_rate", "critic_learning_rate", "clip_coef", "ent_coef", "num_envs", "update_epochs",
                  "mc_samples", "num_minibatches")
FAMILY_DEFAULTS = {  # family or family:scenario -> (the row, its values of FAMILY_COLUMNS)
    "diff": ("CORA Table V: differential games", (5e-5, 5e-4, 0.2, 1e-4, 4, 10, 16, 1)),
    "mamujoco": ("CORA Table V: Multi-Agent MuJoCo", (5e-4, 5e-3, 0.2, 1e-4, 4, 10, 64, 1)),
    "vmas:navigation": ("CORA Table V: VMAS (Navigation)", (5e-4, 5e-3, 0.2, 1e-4, 64, 10, 16, 4)),
    "vmas": ("CORA Table V: VMAS (others)", (5e-4, 5e-3, 0.2, 1e-4, 16, 10, 16, 4)),
}

# The valid range of every numeric flag, checked before anything starts.
FLAG_RANGES = {
    "seed": ">= 0", "eval_interval": ">= 0", "eval_episodes": ">= 1", "threads": ">= 1",
    "total_timesteps": ">= 1", "num_envs": ">= 1", "num_steps": ">= 1",
    "learning_rate": "> 0", "critic_learning_rate": "> 0", "gamma": "in [0, 1]", "gae_lambda": "in [0, 1]",
    "num_minibatches": ">= 1", "update_epochs": ">= 1", "clip_coef": "> 0", "huber_delta": ">= 0",
    "ent_coef": ">= 0", "max_grad_norm": "> 0", "target_kl": "> 0", "hidden_dim": ">= 1", "num_layers": ">= 1",
    "init_log_std": "in [-10, 2]", "num_coalitions": ">= -1", "coalition_sets": ">= 1", "mc_samples": ">= 1", "core_reg": ">= 0",
    "violation_samples": ">= 0", "truth_samples": ">= 0", "q_epochs": ">= 1", "q_learning_rate": "> 0",
    "q_stop": "in [0, 1]", "q_patience": ">= 1",
}
# The Q critics take Q_STEPS Adam steps per rollout: 50 full-batch epochs were chosen for credit
# quality on matrix:peaks5 (docs/cora.md); there, with 4 minibatches, 13 epochs (52 steps) track as
# well as 50 epochs (200 steps) at a fifth of the time, so the schedule counts steps, not epochs.
Q_STEPS = 50
# One critic evaluation in the Monte-Carlo pass costs about this on one thread of the reference CPU
# (docs/cora.md, `python docs/cora_speed.py --mc-only`); a run whose pass will take longer than
# MC_NOTE_SECONDS per update says so before it starts.
MC_EVAL_SECONDS, MC_NOTE_SECONDS = 0.25e-6, 5.0


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


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_dim, hidden, out_dim, out_std, layers=2, activation="tanh", feature_norm=False, layer_norm=False):
    """on-policy's MLP: [a LayerNorm over the input] -> `layers` x (Linear, activation, [LayerNorm])
    -> a Linear head. Orthogonal init: gain sqrt(2) on the hidden layers, out_std on the head (0.01
    on a policy head, ILVF Table 1's gain; 1 on a value head); zero biases."""
    body = hidden_layers(in_dim, hidden, layers, activation, feature_norm, layer_norm)
    return nn.Sequential(*body, layer_init(nn.Linear(hidden, out_dim), std=out_std))


def hidden_layers(in_dim, hidden, layers, activation, feature_norm, layer_norm):
    """mlp()'s body, a list of modules: [LayerNorm(in_dim)], then `layers` x (Linear, activation, [LayerNorm])."""
    body = [nn.LayerNorm(in_dim)] if feature_norm else []
    for d in [in_dim] + [hidden] * (layers - 1):
        body += [layer_init(nn.Linear(d, hidden)), ACTIVATIONS[activation]()] + ([nn.LayerNorm(hidden)] if layer_norm else [])
    return body


def stacked_forward(nets, x):
    """n MLPs of one shape (an agent each) on x [..., n, in_dim] -> [..., n, out_dim], agent k's slice
    through net k: each layer's weights stacked over the agents, one batched op per layer."""
    for i, layer in enumerate(nets[0]):
        if isinstance(layer, (nn.Linear, nn.LayerNorm)):
            weight = torch.stack([net[i].weight for net in nets])  # [n, out, in] or [n, d]
            bias = torch.stack([net[i].bias for net in nets])  # [n, out]
            if isinstance(layer, nn.Linear):
                x = torch.einsum("...ni,noi->...no", x, weight) + bias
            else:
                x = nn.functional.layer_norm(x, layer.normalized_shape, eps=layer.eps) * weight + bias
        else:  # the activation
            x = layer(x)
    return x


class Actors(nn.Module):
    """One Gaussian policy per agent (no parameter sharing), each with its own log-std. forward:
    all agents at once, obs [..., n, obs_dim] -> means [..., n, D] (`stacked_forward`: one batched
    matmul per layer, no loop over samples or agents); agent_dist(k, ...): agent k alone, which
    HAPPO's sequential update differentiates."""

    def __init__(self, obs_dim, n_agents, action_dim, hidden, init_log_std, **net):
        super().__init__()
        self.agents = nn.ModuleList(mlp(obs_dim, hidden, action_dim, 0.01, **net) for _ in range(n_agents))
        self.log_stds = nn.ParameterList(nn.Parameter(torch.full((action_dim,), init_log_std)) for _ in range(n_agents))

    def forward(self, obs):
        return stacked_forward(self.agents, obs)

    def dist(self, obs):
        mean = self(obs)
        return Normal(mean, torch.stack(list(self.log_stds)).exp().expand_as(mean))

    def agent_dist(self, k, obs_k):
        """Agent k's policy on its own observations obs_k [..., obs_dim]."""
        mean = self.agents[k](obs_k)
        return Normal(mean, self.log_stds[k].exp().expand_as(mean))


def happo_surrogate(ratio, adv, factor, clip_coef):
    """HAPPO's clipped surrogate (to maximize) per sample: M * min(r A, clip(r, 1-c, 1+c) A)."""
    return factor * torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)


def sequential_actor_update(actors, optimizers, perm, b_obs, b_actions, b_logprobs, b_alloc, args):
    """Update the agents one at a time in the order `perm`. Agent perm[k]'s surrogate is weighted
    by M, the product of the new/old probability ratios of perm[0..k-1] after their updates,
    and uses the agent's own allocated advantage A_{perm[k]}.
    b_obs [B,n,obs_dim], b_actions [B,n,D], b_logprobs [B,n], b_alloc [B,n] (the allocated A_i).
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
                dist = actors.agent_dist(k, b_obs[mb, k])
                newlogprob = dist.log_prob(b_actions[mb, k]).sum(-1)  # [M]
                entropy = dist.entropy().sum(-1).mean()
                logratio = newlogprob - b_logprobs[mb, k]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    stats["clipfracs"].append(((ratio - 1.0).abs() > args.clip_coef).float().mean())

                mb_adv = b_alloc[mb]  # [M, n]: each agent's allocated advantage
                if args.scale_alloc:
                    mb_adv = scale_allocation(mb_adv)
                pg_loss = -happo_surrogate(ratio, mb_adv[:, k], factor[mb], args.clip_coef).mean()
                actor_loss = pg_loss - args.ent_coef * entropy
                optimizers[k].zero_grad()
                actor_loss.backward()
                nn.utils.clip_grad_norm_(optimizers[k].param_groups[0]["params"], args.max_grad_norm)
                optimizers[k].step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break
        with torch.no_grad():  # M *= this agent's new/old ratio on the whole batch
            newlogprob = actors.agent_dist(k, b_obs[:, k]).log_prob(b_actions[:, k]).sum(-1)
            factor = factor * (newlogprob - b_logprobs[:, k]).exp()
    stats.update(pg_loss=pg_loss, entropy=entropy, approx_kl=approx_kl)
    return factors, stats


class QNet(nn.Module):
    """One critic Q(s, a) on the state and the joint action: a first layer that takes s and the
    actions through separate linear maps (`first_layer`), then a tanh MLP (`head`)."""

    def __init__(self, state_dim, n_agents, action_dim, hidden):
        super().__init__()
        self.n, self.D = n_agents, action_dim
        self.state_in = layer_init(nn.Linear(state_dim, hidden))
        self.action_in = layer_init(nn.Linear(n_agents * action_dim, hidden))
        self.head = nn.Sequential(nn.Tanh(), layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                                  layer_init(nn.Linear(hidden, 1), std=1.0))
        self.scratch = torch.empty(0)  # mc_coalition_q's buffers, kept between calls (not part of the model)

    def first_layer(self, state, actions):
        """state [..., S], actions [..., n, D] -> [..., H] (shapes broadcast)."""
        return self.state_in(state) + self.action_in(actions.flatten(-2))

    def agent_terms(self, actions, out=None):
        """Agent i's part of the first layer's action map, W_i a_i, agents first: actions [..., n, D] -> [n, ..., H]
        (written into `out` of that shape when given)."""
        W = self.action_in.weight.view(-1, self.n, self.D).permute(1, 2, 0)  # [n, D, H]
        x = actions.movedim(-2, 0)  # [n, ..., D]
        terms = torch.bmm(x.reshape(self.n, -1, self.D), W, out=None if out is None else out.view(self.n, -1, out.shape[-1]))
        return terms.view(*x.shape[:-1], -1)

    def forward(self, state, actions):
        """state [..., S], actions [..., n, D] -> Q [...]."""
        return self.head(self.first_layer(state, actions)).squeeze(-1)


def mc_coalition_q(q, state, actions, mc_actions, coalitions, rows_per_chunk=8192):
    """Eq. (7), inner term, by Monte Carlo: (1/K) sum_k Q(s, a_C, a^k_-C) for the critic q, every
    sample and every coalition. state [B, S], actions [B, n, ...] (taken), mc_actions [B, K, n, ...]
    (drawn from the current policies), coalitions [m, n] bool -> [B, m].
    The work is the paper's: q on B m K mixed joint actions ("C keeps a_C, the others play draw k").
    Three things make each evaluation cheap without changing q's function:
    - q's first layer is linear in the actions, so for a mixed joint action it is its value at draw
      k plus, for each agent i of C, i's term for a_i minus its term for a^k_i: one GEMM of the
      coalitions' 0/1 rows [m, n] with those differences;
    - the head's tanh as 2 sigmoid(2x) - 1 (the same function: float32 rounding apart; a float32
      sigmoid costs 0.4 ns here, tanh 2.8 ns), with the constants folded into the GEMMs, since
      W tanh(x) + c = 2 W sigmoid(2x) + (c - W 1): no pass over memory of their own;
    - its large intermediates in buffers that q keeps between calls (`q.scratch`), reused by every
      chunk of about `rows_per_chunk` joint actions; so the pass takes no gradient (it runs under
      torch.no_grad, as Eq. (7)'s values are targets, not parameters).
    What is left is the head itself, a [64, 64] GEMM and 2 x 64 sigmoids per evaluation: the pass's
    floor, against which docs/cora_speed.py --mc-only measures it (docs/cora.md)."""
    B, K, n = mc_actions.shape[:3]
    m, H = coalitions.shape[0], q.state_in.out_features
    hidden, output = q.head[1], q.head[3]  # head = (tanh, hidden, tanh, output)
    c_hidden = hidden.bias - hidden.weight.sum(1)  # [H]: c - W 1
    c_output = output.bias - output.weight.sum(1)  # [1]
    inside = coalitions.to(state.dtype)  # [m, n]
    per_chunk = max(1, rows_per_chunk // (K * m))  # samples per chunk
    rows = min(B, per_chunk) * K * m
    # the large intermediates live in buffers that q keeps: fresh multi-MB memory costs a page fault
    # per 4 KiB the first time it is written, which on this CPU doubled the pass
    sizes = (rows // m * n * H, rows // m * H, rows * H, rows * H, rows)
    if q.scratch.numel() < sum(sizes) or q.scratch.dtype != state.dtype or q.scratch.device != state.device:
        q.scratch = state.new_empty(sum(sizes))
    t_buf, d_buf, x1, x2, v = q.scratch[: sum(sizes)].split(sizes)
    out = state.new_empty(B, m)
    for start in range(0, B, per_chunk):
        sl = slice(start, start + per_chunk)
        b = len(state[sl])
        r = b * K * m
        terms = q.agent_terms(mc_actions[sl], out=t_buf[: n * b * K * H].view(n, b, K, H))  # each agent's term at draw k
        drawn = torch.sum(terms, 0, out=d_buf[: b * K * H].view(b, K, H))
        drawn.add_(q.state_in(state[sl, None])).add_(q.action_in.bias)  # [b, K, H]: q.first_layer at draw k
        swap = torch.sub(q.agent_terms(actions[sl, None]), terms, out=terms)  # a_i's term - a^k_i's
        # rows (coalition, sample, draw): 2 x the first layer, 2 x the hidden layer, then q
        mixed = torch.addmm(drawn.view(1, -1), inside, swap.view(n, -1), beta=2.0, alpha=2.0, out=x1[: r * H].view(m, -1))
        torch.addmm(c_hidden, mixed.sigmoid_().view(r, H), hidden.weight.T, beta=2.0, alpha=4.0, out=x2[: r * H].view(r, H))
        torch.addmm(c_output, x2[: r * H].view(r, H).sigmoid_(), output.weight.T, alpha=2.0, out=v[:r].view(r, 1))
        out[sl] = v[:r].view(m, b, K).mean(-1).T
    return out


class TwinQ(nn.Module):
    """Clipped double Q: two independent critics; coalition values take their minimum (Eq. 7)."""

    def __init__(self, state_dim, n_agents, action_dim, hidden):
        super().__init__()
        self.qs = nn.ModuleList(QNet(state_dim, n_agents, action_dim, hidden) for _ in range(2))

    def forward(self, state, actions):
        return torch.stack([q(state, actions) for q in self.qs])  # [2, ...]

    def coalition_q(self, state, actions, policy, coalitions, mc_samples):
        """min_j (1/K) sum_k Q_j(s, a_C, a^k_-C): [B, m], a^k drawn from the policy (over [B, n])."""
        mc_actions = policy.sample((mc_samples,)).transpose(0, 1)  # [B, K, n, ...]
        return torch.minimum(*[mc_coalition_q(q, state, actions, mc_actions, coalitions) for q in self.qs])


class QuadraticQ(nn.Module):
    """CORA-PPO-QC (Sec. V-A): twin state-dependent quadratic forms in the actions,
    Q_j(s, x) = b(s) + sum_i <u_i(s), x_i> + sum_{i<j} x_i^T W_ij(s) x_j, with x_i the action vector.
    Being multilinear in independent agents' actions, E_{a_-C ~ pi}[Q(s, a_C, a_-C)] is Q with
    x_j = mu_j(o_j), the policy mean, for the agents outside C: coalition values in closed form."""

    def __init__(self, state_dim, n_agents, action_dim, hidden):
        super().__init__()
        self.n, self.D = n_agents, action_dim
        pairs = torch.triu_indices(n_agents, n_agents, offset=1)
        self.register_buffer("pi", pairs[0])
        self.register_buffer("pj", pairs[1])
        P = pairs.shape[1]
        self.trunk = nn.ModuleList(nn.Sequential(layer_init(nn.Linear(state_dim, hidden)), nn.Tanh(),
                                                 layer_init(nn.Linear(hidden, hidden)), nn.Tanh()) for _ in range(2))
        self.out = nn.ModuleList(layer_init(nn.Linear(hidden, 1 + n_agents * action_dim + P * action_dim**2), std=0.1)
                                 for _ in range(2))

    def values(self, state, x):
        """The form: state [B, S], x [B, ..., n, D] (actions or policy means) -> [2, B, ...].
        The W_ij are the blocks above the diagonal of one [nD, nD] matrix W(s): the pair terms are x'W(s)x."""
        n, A = self.n, self.D
        xf = x.reshape(len(x), -1, n * A)  # [B, R, nD]
        out = []
        for trunk, head in zip(self.trunk, self.out):
            coef = head(trunk(state))  # [B, 1 + nD + P D^2]: b, the u_i, the W_ij
            W = coef.new_zeros(len(coef), n, n, A, A)
            W[:, self.pi, self.pj] = coef[:, 1 + n * A :].view(len(coef), -1, A, A)
            W = W.transpose(2, 3).reshape(-1, n * A, n * A)  # [B, nD, nD]
            u = coef[:, 1 : 1 + n * A].unsqueeze(1)  # [B, 1, nD]
            out.append((coef[:, :1] + (xf * (u + xf @ W)).sum(-1)).view(x.shape[:-2]))
        return torch.stack(out)

    def forward(self, state, actions):
        """Q_j(s, a) for taken actions [B, n, D] -> [2, B]."""
        return self.values(state, actions)

    def coalition_q(self, state, actions, policy, coalitions, mc_samples=None, samples_per_chunk=64):
        """min_j Q_j(s, x) with x_i = a_i for i in C and mu_i otherwise: [B, m], exact: the form on
        every coalition's x [b, m, n, D], in chunks of samples (memory)."""
        means = policy.mean.to(state.dtype)
        inside = coalitions[:, :, None]  # [m, n, 1]
        return torch.cat([self.values(state[sl], torch.where(inside, actions[sl, None], means[sl, None])).amin(0)
                          for sl in torch.arange(len(state), device=state.device).split(samples_per_chunk)])


class Critic(nn.Module):
    """Centralized value V(s): state [..., state_dim] -> [...]."""

    def __init__(self, state_dim, hidden, **net):
        super().__init__()
        self.net = mlp(state_dim, hidden, 1, 1.0, **net)

    def forward(self, state):
        return self.net(state).squeeze(-1)


def main():
    args, ckpt, run_name = parse_args(Args, FAMILY_COLUMNS, FAMILY_DEFAULTS, FLAG_RANGES)

    device = set_up(args)

    envs = make_envs(args, device, "continuous")
    spec = envs.spec
    n, D = spec.n_agents, spec.action_dim
    if not 2 <= n <= 16:
        fail(f"CORA needs 2 to 16 agents (coalitions are enumerated as bit masks); {args.env_id} has {n}")
    if not 1 <= args.coalition_sets <= args.batch_size:
        fail(f"--coalition-sets must be in 1..num_envs*num_steps ({args.batch_size}), got {args.coalition_sets}")
    if args.q_learning_rate is None:  # Table V gives one critic rate: V's and the Q critics'
        args.q_learning_rate = args.critic_learning_rate
    if args.q_epochs is None:  # the Q critics' schedule is a number of Adam steps (Q_STEPS), whatever the minibatching
        args.q_epochs = -(-Q_STEPS // args.num_minibatches)
    m = args.num_coalitions if args.num_coalitions > 0 else 2 ** (n - 1) - 1
    mc_seconds = 2 * args.batch_size * min(m, 2**n - 2) * args.mc_samples * MC_EVAL_SECONDS / args.threads
    if args.critic == "mc" and device.type == "cpu" and mc_seconds > MC_NOTE_SECONDS and not args.eval_only:
        print(f"note: the Monte-Carlo pass (Eq. 7) evaluates the critics {args.batch_size} samples x {min(m, 2**n - 2)} "
              f"coalitions x {args.mc_samples} draws x 2 times per update: about {mc_seconds:.0f} s an update on the reference CPU "
              f"({args.threads} thread(s)), {mc_seconds * args.num_iterations / 3600:.1f} h for this run. Cheaper: --critic quadratic (closed form), "
              "--mc-samples 16, --num-coalitions 15, or --cuda (docs/cora.md)", file=sys.stderr, flush=True)

    net = dict(layers=args.num_layers, activation=args.activation, feature_norm=args.feature_norm,
               layer_norm=args.layer_norm)  # the MLPs' shape (on-policy's flags)
    actors = Actors(spec.obs_dim, n, D, args.hidden_dim, args.init_log_std, **net).to(device)
    critic = Critic(spec.state_dim, args.hidden_dim, **net).to(device)
    value_rms = RunningMeanStd().to(device)
    actor_optimizers = [torch.optim.Adam([*net.parameters(), log_std], lr=args.learning_rate, eps=1e-5)
                        for net, log_std in zip(actors.agents, actors.log_stds)]
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate, eps=1e-5)
    twin_q = (TwinQ if args.critic == "mc" else QuadraticQ)(spec.state_dim, n, D, args.hidden_dim).to(device)
    # fused: one kernel updates every tensor; the Q critics take --q-epochs steps a rollout, 15 % faster each
    q_optimizer = torch.optim.Adam(twin_q.parameters(), lr=args.q_learning_rate, eps=1e-5, fused=True)
    coalition_gen = torch.Generator().manual_seed(args.seed)
    generators = {"coalitions": coalition_gen}  # checkpointed with the global RNG states
    every_coalition = all_coalitions(n, device) if n <= 12 else None  # for core/violation_ratio
    knows_truth = envs.reward_of is not None  # the exact A_C (next state independent of the actions)
    if args.coalition_values == "oracle" and not knows_truth:
        fail(f"--coalition-values oracle needs the exact A_C, which {args.env_id} cannot give (matrix: and diff: games "
             "can, their next state ignoring the actions); use --coalition-values learned")

    models = {"actors": actors, "critic": critic, "twin_q": twin_q, "value_rms": value_rms}
    optimizers = {"critic": critic_optimizer, "twin_q": q_optimizer, **{f"actor_{i}": o for i, o in enumerate(actor_optimizers)}}

    def greedy(step, memory):  # the greedy actions, for the evaluations (memory: a recurrent policy's)
        return actors(step.obs), None

    run = Run(args, run_name, ckpt, envs, models, optimizers, generators, "continuous", greedy)
    writer = run.writer

    def value_of(state):
        """V(s) in return units (denormalized when value normalization is on)."""
        v = critic(state)
        return value_rms.denormalize(v) if args.value_norm else v

    def truth_of(state, actions, policy, coalitions):
        """The exact A_C [B, m] from the env's reward (`true_coalition_adv`), where knows_truth."""
        return true_coalition_adv(envs.reward_of, state, actions, policy, coalitions)

    def coalition_adv_of(state, actions, policy, coalitions):
        """Eq. (7) for a batch and a coalition set: [B, m] in return units; with --coalition-values
        oracle the env's exact A_C (after the critics' pass all the same: the same random streams)."""
        q = twin_q.coalition_q(state, actions, policy, coalitions, args.mc_samples)
        if args.coalition_values == "oracle":
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                return truth_of(state, actions, policy, coalitions)
        return coalition_advantages(q, value_of(state), value_rms if args.value_norm else None)

    def grand_adv_of(state, actions, gae):
        """A_N: Alg. 1 l. 19's GAE, or with --grand-advantage q Sec. III-A's min_j Q_j(s, a) - V(s)."""
        if args.grand_advantage == "gae":
            return gae
        return grand_q_advantage(twin_q(state, actions), value_of(state), value_rms if args.value_norm else None)

    # storage
    T, E = args.num_steps, args.num_envs
    obs = torch.zeros((T, E, n, spec.obs_dim), device=device)
    state = torch.zeros((T, E, spec.state_dim), device=device)
    actions = torch.zeros((T, E, n, D), device=device)
    logprobs = torch.zeros((T, E, n), device=device)
    rewards = torch.zeros((T, E), device=device)
    dones = torch.zeros((T, E), device=device)
    values = torch.zeros((T, E), device=device)

    step = envs.reset()
    global_step, done_iterations = run.resume()  # the checkpoint's position and RNG streams, or 0, 0
    mean_return = float("nan")  # of the episodes that ended in the latest rollout that had any
    next_done = torch.zeros(E, device=device)
    with run:  # Ctrl-C, SIGTERM or a crash saves the last whole iteration (Run.__exit__)
        for iteration in range(done_iterations + 1, args.num_iterations + 1):
            watch = Stopwatch(device)  # time/..._ms: this iteration's stages
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
                obs[t], state[t], dones[t] = step.obs, step.state, next_done
                with torch.no_grad():
                    dist = actors.dist(step.obs)
                    action = dist.sample()  # [E, n, D]
                    logprobs[t] = dist.log_prob(action).sum(-1)
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

            watch.lap("time/rollout_ms")

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

            watch.lap("time/gae_ms")

            # ---- the batch ----------------------------------------------------------------
            b_obs, b_state = obs.flatten(0, 1), state.flatten(0, 1)
            b_actions, b_logprobs = actions.flatten(0, 1), logprobs.flatten(0, 1)  # [B, n, D], [B, n]
            b_advantages = advantages.flatten()  # [B]: A_N, the grand coalition's advantage
            b_old_v, b_targets, b_q_targets = old_v.flatten(), targets.flatten(), q_targets.flatten()

            # ---- credit assignment: coalition advantages (Eq. 7) and the core QP (Eq. 24) ----
            with torch.no_grad():
                grand_adv = grand_adv_of(b_state, b_actions, b_advantages)  # [B]: A_N
                # Alg. 1 l. 13: a fresh draw of coalitions for each of `coalition_sets` blocks of
                # timesteps (samples are b = t * E + e, so a block of samples is a block of timesteps)
                blocks = torch.arange(args.batch_size, device=device).tensor_split(args.coalition_sets)
                coalitions = torch.stack([sample_coalitions(n, m, coalition_gen, device) for _ in blocks])  # [G, m, n]
                coalition_adv = torch.zeros(args.batch_size, coalitions.shape[1], device=device)  # [B, m]
                b_alloc, eps = torch.zeros(args.batch_size, n, device=device), torch.zeros(args.batch_size, device=device)
                for blk, C in zip(blocks, coalitions):  # each block marginalizes over the current policies
                    coalition_adv[blk] = coalition_adv_of(b_state[blk], b_actions[blk], actors.dist(b_obs[blk]), C)
                    watch.lap("core/coalition_ms")
                    b_alloc[blk], eps[blk] = allocate(C, coalition_adv[blk], grand_adv[blk], args.core_reg, args.allocation)  # [b, n]
                    watch.lap("core/qp_ms")
                coalitions_of = coalitions.repeat_interleave(torch.tensor([len(b) for b in blocks], device=device), 0)  # [B, m, n]
                violation_ratio, equal_split, adv_corr = credit_diagnostics(  # core/... tags
                    coalition_adv_of, truth_of if knows_truth else None, lambda k: actors.dist(b_obs[:k]),
                    b_state, b_actions, coalitions_of, coalition_adv, b_alloc, eps, grand_adv, every_coalition,
                    args.violation_samples, args.truth_samples)
            watch.lap("core/diagnostics_ms")

            # ---- HAPPO update (Alg. 1 l. 22-23): the actors one after another, each with its A_i ----
            perm = torch.randperm(n).tolist()  # a fresh agent order at every update
            factors, stats = sequential_actor_update(actors, actor_optimizers, perm, b_obs, b_actions,
                                                     b_logprobs, b_alloc, args)
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

            watch.lap("time/update_ms")

            # ---- Q critics (Alg. 1 l. 25): both regress on y, on their own schedule -------------
            epoch_losses = []  # each epoch's Q loss, summed over its minibatches (for --q-stop)
            for epoch in range(args.q_epochs):
                b_inds = torch.randperm(args.batch_size, device=device)
                epoch_loss = 0.0
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb = b_inds[start : start + args.minibatch_size]
                    q_loss = ((twin_q(b_state[mb], b_actions[mb]) - b_q_targets[mb]) ** 2).mean(-1).sum()
                    q_optimizer.zero_grad()
                    q_loss.backward()
                    nn.utils.clip_grad_norm_(twin_q.parameters(), args.max_grad_norm)
                    q_optimizer.step()
                    epoch_loss = epoch_loss + q_loss.detach()
                epoch_losses.append(epoch_loss)
                if args.q_stop > 0 and epoch >= args.q_patience:  # the loss flattened (on peaks5 too early a sign: docs/cora.md)
                    if float(epoch_losses[-1]) > (1 - args.q_stop) * float(epoch_losses[-1 - args.q_patience]):
                        break

            watch.lap("core/q_critics_ms")

            # ---- logging ------------------------------------------------------------------
            y_pred, y_true = values.flatten(), returns.flatten()
            var_y = y_true.var()
            explained_var = float("nan") if var_y == 0 else float(1 - (y_true - y_pred).var() / var_y)
            writer.add_scalar("charts/learning_rate", actor_optimizers[0].param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/critic_learning_rate", critic_optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/q_learning_rate", q_optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
            writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
            writer.add_scalar("losses/entropy", entropy.item(), global_step)
            writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
            writer.add_scalar("losses/clipfrac", torch.stack(clipfracs).mean().item(), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            writer.add_scalar("charts/action_std", torch.stack(list(actors.log_stds)).exp().mean().item(), global_step)
            with torch.no_grad():  # each agent's policy mean (first action dim) over the batch: CORA Fig. 3's paths
                mean_action = actors(b_obs).mean(0)[:, 0]  # [n]
            for i, a in enumerate(mean_action.tolist()):
                writer.add_scalar(f"charts/action_mean/agent{i}", a, global_step)
            writer.add_scalar("happo/last_agent_factor_std", factors[perm[-1]].std().item(), global_step)
            writer.add_scalar("losses/q_loss", q_loss.item(), global_step)
            writer.add_scalar("core/q_epochs", len(epoch_losses), global_step)
            writer.add_scalar("core/epsilon", eps.mean().item(), global_step)
            writer.add_scalar("core/violation_ratio", violation_ratio, global_step)
            writer.add_scalar("core/equal_split_frac", equal_split.float().mean().item(), global_step)
            writer.add_scalar("core/adv_corr", adv_corr, global_step)
            writer.add_scalar("core/alloc_std", b_alloc.std().item(), global_step)
            writer.add_scalar("core/alloc_spread", b_alloc.std(1).mean().item(), global_step)  # across agents
            count = int(ep_count)
            if count:
                mean_return = ep_return_sum.item() / count
                writer.add_scalar("charts/episodic_return", mean_return, global_step)
                writer.add_scalar("charts/episodic_length", ep_length_sum.item() / count, global_step)
                if spec.has_win:
                    writer.add_scalar("charts/win_rate", ep_win_sum.item() / count, global_step)
            run.end_iteration(iteration, global_step, watch, mean_return)  # snapshot, timings, SPS, evaluation, progress


# ---- measuring the mechanism: the exact coalition advantages, where the env knows them ---------
# (core/adv_corr's truth and --coalition-values oracle; not part of Alg. 1)
def true_coalition_adv(reward_of, state, actions, policy, coalitions, draws=1024):
    """The truth that core/adv_corr measures Eq. (7)'s estimate against, for envs whose next state
    does not depend on the actions (there Q(s, a_C, a_-C) - V(s) = r(s, a_C, a_-C) - E_pi[r(s, a)]):
    A_C = E_{a_-C ~ pi}[r(s, a_C, a_-C)] - E_{a ~ pi}[r(s, a)], by Monte Carlo on the env's own
    reward with `draws` samples (no critic involved). reward_of: the env's, state [B, S],
    actions [B, n, D], policy over [B, n, D], coalitions [m, n] or per sample [B, m, n] -> [B, m]."""
    a = policy.sample((draws,)).transpose(0, 1)  # [B, K, n, D]
    B, K = a.shape[:2]
    m, n = coalitions.shape[-2:]
    inside = coalitions.movedim(-2, 0).reshape(m, -1, 1, n, 1)  # [m, 1 or B, 1, n, 1]
    joint = torch.where(inside, actions[:, None], a)  # [m, B, K, n, D]
    s = state[:, None].expand(B, K, -1)  # [B, K, S]
    return (reward_of(s, joint).mean(-1) - reward_of(s, a).mean(-1)).T


def credit_diagnostics(coalition_adv_of, truth_of, policy_of, state, actions, coalitions, coalition_adv, alloc, eps,
                       grand_adv, every_coalition, violation_samples, truth_samples):
    """How the credit behaved in an update (not part of Alg. 1; its draws leave the training's random
    streams alone): core/violation_ratio, the share of all 2^n - 2 coalitions' core constraints the
    allocation misses on the first `violation_samples` samples; per sample, whether the core gave
    the equal split A_N / n (MAPPO's update); core/adv_corr, the correlation of Eq. (7)'s estimate
    with the exact A_C on the first `truth_samples` samples, where truth_of is given (else NaN).
    policy_of(k): the current policies on the first k samples; coalitions [B, m, n] per sample."""
    violation_ratio = adv_corr = float("nan")
    devices = [state.device] if state.device.type == "cuda" else []
    if every_coalition is not None and violation_samples > 0:
        with torch.random.fork_rng(devices=devices):
            k = min(violation_samples, len(state))
            full_adv = coalition_adv_of(state[:k], actions[:k], policy_of(k), every_coalition)
        covered = alloc[:k] @ every_coalition.to(alloc.dtype).T  # sum_{i in C} A_i
        violation_ratio = (covered < full_adv - eps[:k, None] - 1e-6).float().mean().item()
    if truth_of is not None and truth_samples > 0:
        with torch.random.fork_rng(devices=devices):
            k = min(truth_samples, len(state))
            truth = truth_of(state[:k], actions[:k], policy_of(k), coalitions[:k])
        adv_corr = torch.corrcoef(torch.stack([coalition_adv[:k].flatten(), truth.flatten()]))[0, 1].item()
    n = alloc.shape[-1]
    equal_split = (alloc - grand_adv[:, None] / n).abs().amax(1) <= 1e-5 * grand_adv.abs().clamp(min=1)
    return violation_ratio, equal_split, adv_corr


# ==================================================================================================
# RUN MACHINERY. The same in every cleanmarl script, byte for byte (tests/test_scripts.py keeps the
# copies equal); a reader of the algorithm can skip it. Flags and their ranges, the family-default
# lookup, seeding, env creation, checkpoints (tensors and plain values only), RNG state, signals,
# greedy evaluation, video and progress lines.
# ==================================================================================================
SCRIPT = os.path.basename(__file__)
# Flags a resumed run may change; every other flag it sets must match the checkpoint's run.
RUN_FLAGS = {"checkpoint", "eval_only", "eval_interval", "eval_episodes", "capture_video", "save_model",
             "total_timesteps", "track", "wandb_project_name", "wandb_entity", "threads", "cuda"}
DERIVED = ("batch_size", "minibatch_size", "num_iterations", "defaults_from")  # set by parse_args, never by hand


def fail(message):
    """A user error: one line on stderr and exit status 2, never a traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(args_class, family_columns, family_defaults, flag_ranges):
    """The command line -> (args, the checkpoint to resume or evaluate or None, the run's name).
    Unset flags take the env family's row of family_defaults (a resumed run: its checkpoint's)."""
    args = tyro.cli(args_class)
    if args.eval_only and not args.checkpoint:
        fail("--eval-only needs --checkpoint PATH (a checkpoint this script wrote)")
    ckpt = load_checkpoint(args) if args.checkpoint else None
    if ckpt is None:
        args.defaults_from = apply_family_defaults(args, family_columns, family_defaults, flags_given(sys.argv[1:]))
    check_args(args, flag_ranges)
    args.batch_size = args.num_envs * args.num_steps
    if args.batch_size % args.num_minibatches:
        fail(f"--num-minibatches ({args.num_minibatches}) must divide num_envs*num_steps ({args.batch_size}): set one that does")
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    if args.num_iterations < 1:
        fail(f"--total-timesteps ({args.total_timesteps}) is less than one rollout ({args.batch_size} steps)")
    if ckpt and ckpt["iteration"] >= args.num_iterations and not args.eval_only:
        fail(f"--checkpoint {args.checkpoint} is a finished run ({ckpt['global_step']} steps): evaluate it with "
             "--eval-only, or train it further with a larger --total-timesteps")
    if args.capture_video and not (args.eval_interval or args.save_model or args.eval_only):
        fail("--capture-video records the greedy evaluations, and none is scheduled: add --eval-interval N or --save-model")
    # a resumed run writes on into its own folder, so its TensorBoard curves continue
    run_name = (os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint))) if ckpt
                else f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    return args, ckpt, run_name


def flags_given(argv):
    """The Args fields set on the command line: `--num-envs 8`, `--num-envs=8`, `--no-anneal-lr`."""
    names = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return names | {name[3:] for name in names if name.startswith("no_")}


def apply_family_defaults(args, family_columns, family_defaults, given):
    """Fill the flags the command line left unset from the env's row of family_defaults (looked up
    as family:scenario, then family, then "*"); returns the row's source ("Args": none applies)."""
    family, _, rest = args.env_id.partition(":")
    source, values = (family_defaults.get(f"{family}:{rest.split(',')[0]}") or family_defaults.get(family)
                      or family_defaults.get("*") or ("Args", ()))
    for name, value in zip(family_columns, values):
        if name not in given:
            setattr(args, name, value)
    return source


def check_args(args, flag_ranges):
    """Each numeric flag against its range in flag_ranges (NaN fails every range)."""
    for name, rule in flag_ranges.items():
        value = getattr(args, name)
        if value is None:  # an optional flag left unset
            continue
        op, bound = rule.split(" ", 1)
        if op == "in":  # "in [a, b]" (closed) or "in (a, b)" (open)
            low, high = (float(x) for x in bound[1:-1].split(","))
            ok = low <= value <= high if bound[0] == "[" else low < value < high
        else:
            ok = value >= float(bound) if op == ">=" else value > float(bound)
        if not ok:
            fail(f"--{name.replace('_', '-')} must be {rule}, got {value}")


def set_up(args):
    """Seed python, numpy and torch; set the threads; the device."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    if args.cuda and device.type == "cpu":
        print("warning: --cuda given but CUDA is not available; running on the CPU", file=sys.stderr)
    return device


def make_envs(args, device, action_type):
    """The training envs (one with --eval-only: it needs the spec), or a one-line error."""
    try:
        envs = make_env(args.env_id, 1 if args.eval_only else args.num_envs, args.seed, device, action_type=action_type)
    except EnvError as e:
        fail(str(e))
    if args.capture_video and not envs.can_render:
        fail(f"--capture-video: {args.env_id} cannot render videos (vmas:, mamujoco: and smax: can)")
    if args.capture_video and not all(importlib.util.find_spec(m) for m in ("imageio", "imageio_ffmpeg")):
        fail("--capture-video needs imageio and imageio-ffmpeg: pip install imageio==2.38.1 imageio-ffmpeg==0.6.0")
    return envs


def load_checkpoint(args):
    """Read --checkpoint with weights_only=True (tensors and plain values: nothing in the file can
    run) and take on its run's flags: a flag left at its default takes the checkpoint's value, and
    one set to another value must match it (outside RUN_FLAGS)."""
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickled object other than tensors and plain values: never unpickled
        fail(f"--checkpoint {args.checkpoint} holds more than tensors and plain values, so it is not loaded (it could run "
             "code): a checkpoint from before cleanmarl's safe format, or not a cleanmarl checkpoint; train it again")
    except Exception as e:  # missing file, not a torch file, truncated
        fail(f"--checkpoint {args.checkpoint}: cannot read it ({type(e).__name__}: {str(e).splitlines()[0]})")
    if not isinstance(ckpt, dict) or "script" not in ckpt:  # another program's, or an old cleanmarl weights-only file
        fail(f"--checkpoint {args.checkpoint} is not a checkpoint this version of {SCRIPT} can resume or evaluate")
    if ckpt["script"] != SCRIPT:
        fail(f"--checkpoint {args.checkpoint} was written by {ckpt['script']}; run it with that script, not {SCRIPT}")
    defaults = vars(args.__class__())
    for name, saved in ckpt["args"].items():
        given = getattr(args, name, None)
        if name not in defaults or name in DERIVED[:3]:
            continue
        if given == defaults[name]:
            setattr(args, name, saved)
        elif given != saved and name not in RUN_FLAGS:
            fail(f"--checkpoint {args.checkpoint} is a run with --{name.replace('_', '-')} {saved}, not {given}: "
                 "leave the flag out to use the checkpoint's")
    return ckpt


def rng_state(generators):
    """The global RNG states and the script's own generators, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "numpy": {k: v for k, v in np_state.items() if k != "state"} | {"pos": np_state["state"]["pos"]},
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in generators.items()}}


def restore_rng(rng, generators):
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np_extra = dict(rng["numpy"])
    np.random.set_state({"bit_generator": np_extra.pop("bit_generator"), "has_gauss": np_extra["has_gauss"],
                         "gauss": np_extra["gauss"], "state": {"key": rng["numpy_key"].numpy().astype(np.uint32),
                                                               "pos": np_extra["pos"]}})
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    for name, generator in generators.items():
        generator.set_state(rng["generators"][name])


def evaluate(greedy, env_id, episodes, seed, device, action_type, video_path=None):
    """Greedy evaluation: team return (and win) of the first episode of each of `episodes` envs, and
    env 0's states along that episode [L, state_dim]; with video_path, env 0's episode is recorded
    there. Same seed as training: for seeded games (matrix, diff) the seed picks the game itself.
    greedy(step, memory) -> (actions, memory): memory is None at the start (a recurrent policy's state)."""
    env = make_env(env_id, episodes, seed, device, action_type=action_type)
    step = env.reset()
    frames = [env.render()] if video_path else []
    returns = torch.full((episodes,), float("nan"), device=device)
    wins = torch.zeros(episodes, device=device)
    states, memory = [], None
    with torch.no_grad():
        while returns.isnan().any():
            if returns[0].isnan():
                states.append(step.state[0])
            actions, memory = greedy(step, memory)
            step = env.step(actions)
            first = step.episodes.done & returns.isnan()
            if video_path and returns[0].isnan() and not first[0]:
                frames.append(env.render())
            returns = torch.where(first, step.episodes.ret, returns)
            if step.episodes.win is not None:
                wins = torch.where(first, step.episodes.win.float(), wins)
    env.close()
    if video_path:
        write_video(video_path, frames)
    return returns, wins if env.spec.has_win else None, torch.stack(states)


def write_video(path, frames, fps=10):
    import imageio.v2 as imageio  # with imageio-ffmpeg (requirements.txt): an mp4 without a system ffmpeg

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with warnings.catch_warnings():  # JAX (SMAX) warns at any fork, here ffmpeg's fork-and-exec
        warnings.filterwarnings("ignore", message="os.fork")
        with imageio.get_writer(path, fps=fps, macro_block_size=1) as video:
            for frame in frames:
                video.append_data(frame)
    print(f"video saved to {path}")


class Stopwatch:
    """Where an iteration's time goes: `lap(tag)` adds the milliseconds since the previous lap to
    `ms[tag]` (on a GPU, once the queued work is done: the host runs ahead)."""

    def __init__(self, device):
        self.device, self.ms = device, {}
        self.last = self.now()

    def now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, tag):
        now = self.now()
        self.ms[tag] = self.ms.get(tag, 0.0) + 1000 * (now - self.last)
        self.last = now


class Run:
    """A run's life around the training loop: the writer, a snapshot after every iteration (saved
    with --save-model at the end, and always on Ctrl-C, SIGTERM or a crash), greedy evaluations,
    progress lines. greedy(step, memory) -> (the greedy actions, memory) (see `evaluate`); summarize(states) -> extra eval.json fields
    from env 0's states along its evaluation episode."""

    def __init__(self, args, run_name, ckpt, envs, models, optimizers, generators, action_type, greedy, summarize=None):
        self.args, self.name, self.envs = args, run_name, envs
        self.device = next(p for m in models.values() for p in m.parameters()).device
        self.models, self.optimizers, self.generators = models, optimizers, generators
        self.action_type, self.greedy, self.summarize = action_type, greedy, summarize
        self.path = f"runs/{run_name}/{args.exp_name}.cleanmarl_model"
        self.ckpt = ckpt
        if ckpt:
            try:
                for name, module in models.items():
                    module.load_state_dict(ckpt["models"][name])
                for name, optimizer in optimizers.items():
                    optimizer.load_state_dict(ckpt["optimizers"][name])
            except (KeyError, RuntimeError, ValueError) as e:
                fail(f"--checkpoint does not fit this run's networks ({str(e).splitlines()[0]})")
        if args.eval_only:
            envs.close()
            summary = self.evaluate(ckpt["global_step"])
            with open(os.path.join(os.path.dirname(args.checkpoint), "eval.json"), "w") as f:
                json.dump(summary, f)
            print("greedy evaluation: " + json.dumps({k: v for k, v in summary.items() if k != "influence"}))
            sys.exit(0)
        if args.track:
            try:
                import wandb
            except ImportError:
                fail("--track needs Weights and Biases: pip install wandb")
            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=vars(args), name=run_name, save_code=True)
        row = " ".join(f"{name}={getattr(args, name)}" for name in FAMILY_COLUMNS)  # this script's table columns
        print(f"run: runs/{run_name}\nhyperparameters ({args.defaults_from} for the flags not given): {row}", flush=True)
        if args.num_iterations * args.batch_size != args.total_timesteps:
            print(f"note: --total-timesteps {args.total_timesteps} is not a whole number of rollouts of {args.batch_size} "
                  f"steps: the run takes {args.num_iterations * args.batch_size}", file=sys.stderr)
        self.writer = SummaryWriter(f"runs/{run_name}")
        self.writer.add_text("hyperparameters",
                             "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    def resume(self):
        """After envs.reset(): the checkpoint's position (global_step, iterations done) and its RNG
        streams, or (0, 0)."""
        position = (self.ckpt["global_step"], self.ckpt["iteration"]) if self.ckpt else (0, 0)
        if self.ckpt:
            restore_rng(self.ckpt["rng"], self.generators)
        self.last_whole = self.snapshot(*position)  # what an interrupt saves
        self.start_step, self.start_time, self.last_print = position[0], time.time(), 0.0
        return position

    def snapshot(self, global_step, iteration):
        """Everything a run needs to go on exactly, copied: weights, optimizers, value normalizer,
        the position and the RNG states. Taken after every iteration, so that an interrupt saves
        the last whole iteration and the resumed run repeats the same steps."""
        return copy.deepcopy({"script": SCRIPT, "args": vars(self.args), "iteration": iteration, "global_step": global_step,
                              "models": {k: m.state_dict() for k, m in self.models.items()},
                              "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                              "rng": rng_state(self.generators)})

    def evaluate(self, global_step):
        """Evaluate the current policy greedily (and record a video); the eval.json summary."""
        args = self.args
        video = f"videos/{self.name}/eval_{global_step}.mp4" if args.capture_video else None
        training_rng = rng_state(self.generators)  # envs such as VMAS seed the global RNGs: training's streams must not move
        returns, wins, states = evaluate(self.greedy, args.env_id, args.eval_episodes, args.seed, self.device,
                                         self.action_type, video)
        summary = {"eval_return_mean": returns.mean().item(), "eval_episodes": args.eval_episodes,
                   "global_step": global_step, "optimal_return": self.envs.spec.optimal_return}
        if wins is not None:
            summary["eval_win_rate"] = wins.mean().item()
        if self.summarize:
            with torch.no_grad():
                summary.update(self.summarize(states))
        restore_rng(training_rng, self.generators)
        if video and args.track:
            import wandb
            wandb.log({"videos": wandb.Video(video)})
        return summary

    def log_evaluation(self, summary):
        self.writer.add_scalar("eval/episodic_return", summary["eval_return_mean"], summary["global_step"])
        if "eval_win_rate" in summary:
            self.writer.add_scalar("eval/win_rate", summary["eval_win_rate"], summary["global_step"])

    def end_iteration(self, iteration, global_step, watch, mean_return):
        """After an iteration's update: the snapshot, the stage timings and SPS, a scheduled greedy
        evaluation, and a progress line every 2 s. Returns the SPS."""
        args = self.args
        watch.lap("time/logging_ms")
        self.last_whole = self.snapshot(global_step, iteration)
        watch.lap("time/snapshot_ms")
        for tag, ms in watch.ms.items():
            self.writer.add_scalar(tag, ms, global_step)
        self.writer.add_scalar("time/iteration_ms", sum(watch.ms.values()), global_step)
        sps = int((global_step - self.start_step) / (time.time() - self.start_time))
        self.writer.add_scalar("charts/SPS", sps, global_step)
        if args.eval_interval and global_step // args.eval_interval > (global_step - args.batch_size) // args.eval_interval:
            self.log_evaluation(self.evaluate(global_step))
        now = time.time()
        if now - self.last_print > 2.0 or iteration == args.num_iterations:
            self.last_print = now
            ret = f"{mean_return:.3f}" if mean_return == mean_return else "- (no episode has ended yet)"
            print(f"iter {iteration}/{args.num_iterations} step {global_step}/{args.num_iterations * args.batch_size} "
                  f"episodic_return={ret} SPS={sps}", flush=True)

    def __enter__(self):
        self.handlers = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, self.on_signal)
        return self

    @staticmethod
    def on_signal(signum, frame):  # SIGTERM (a cluster's time limit or preemption) ends the run as Ctrl-C does
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __exit__(self, kind, error, traceback):
        args = self.args
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        exit_code = 0 if kind is None else (143 if str(error) == "SIGTERM" else 130) if interrupted else 1
        if interrupted:  # Ctrl-C or SIGTERM: keep what the run made, exit 130 / 143
            print(f"interrupted ({str(error) or 'SIGINT'}): flushing logs and saving the model as of its last whole "
                  f"iteration; resume with --checkpoint {self.path}", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second signal must not cut the checkpoint short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.save_model or exit_code:  # a crash too: save what there is, then the traceback
            torch.save(self.last_whole, self.path + ".tmp")  # through a temporary file: a kill keeps the old one whole
            os.replace(self.path + ".tmp", self.path)
            print(f"model saved to {self.path}")
        signal.signal(signal.SIGINT, self.handlers[0])
        signal.signal(signal.SIGTERM, self.handlers[1])
        self.envs.close()
        self.writer.flush()
        if exit_code == 1:
            return False
        if args.save_model and not exit_code:
            summary = self.evaluate(self.last_whole["global_step"])
            self.log_evaluation(summary)
            with open(f"runs/{self.name}/eval.json", "w") as f:
                json.dump(summary, f)
            print("greedy evaluation: " + json.dumps({k: v for k, v in summary.items() if k != "influence"}))
        self.writer.close()
        if args.track:
            import wandb
            wandb.finish()
        if exit_code:
            sys.exit(exit_code)


if __name__ == "__main__":
    main()
