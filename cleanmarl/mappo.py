"""MAPPO for discrete actions (with action masks).

Paper: Yu et al., "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games", NeurIPS
2022 Datasets and Benchmarks. Idea: PPO with one policy shared by all agents (decentralized
execution on each agent's observation, optionally with its one-hot id; `--no-share-actor`: one
per agent) and a centralized value function V(s) of the global state; every agent is updated
with the same global advantage.
Defaults follow Table V of the CORA paper for matrix games (this script's main family).

Run:  python cleanmarl/mappo.py --env-id matrix:team
      python cleanmarl/mappo.py --env-id vmas:navigation --num-envs 64

What this file implements, and where:
  GAE, A_t = sum_l (gamma*lambda)^l delta_{t+l}        -> `compute_gae`
  truncated episodes bootstrapped from V(final state)  -> "rollout" block
  PPO clipped surrogate + entropy bonus                -> "PPO update" block
  clipped value loss (Huber), value normalization      -> `value_loss`, `RunningMeanStd`
  dead agents (step.active false) left out of the loss -> `masked_mean`

Shape convention: [T, E, n, ...] = (time, envs, agents, features); B = T * E samples.
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
from torch.distributions.categorical import Categorical
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
    """the learning rate of the actor"""
    critic_learning_rate: float = 5e-3
    """the learning rate of the critic"""
    anneal_lr: bool = True
    """toggle linear annealing of both learning rates to 0"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda of generalized advantage estimation"""
    num_minibatches: int = 1
    """the number of minibatches per epoch (over env-steps; all agents of a step stay together)"""
    update_epochs: int = 10
    """the number of PPO epochs per rollout"""
    norm_adv: bool = True
    """toggle advantage normalization (per minibatch)"""
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
    """stop the epochs of a rollout early once the approximate KL exceeds this"""
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
    agent_id: bool = True
    """toggle appending the one-hot agent id to each agent's observation (with --share-actor)"""
    share_actor: bool = True
    """toggle one actor network shared by all agents (the MAPPO paper's choice); off: an actor per agent"""

    # filled in at start (never set by hand; hidden from --help)
    batch_size: tyro.conf.Suppress[int] = 0
    """env-steps per rollout (num_envs * num_steps)"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """env-steps per minibatch"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """number of rollouts"""
    defaults_from: tyro.conf.Suppress[str] = ""
    """the table row the unset hyperparameters came from (FAMILY_DEFAULTS)"""


# Unset flags take the row of the env's family in the papers' tables: CORA Table V (epochs: its
# shared 10) and, for the reward-sum families, ILVF Table 1 (which leaves the envs open: 4).
# Args' own defaults are the matrix-game row. A flag set on the command line always wins; the
# run prints the row it used and records it as `defaults_from`.
# Neither table gives minibatches: 4 on the rows of 16 or more envs, chosen on SMAX 2s3z and held for VMAS
# and GRF (docs/parity.md); 1 (the full batch, on-policy's default) on the 4-env rows, as their paper runs here.
# Each row's MLP: the scripts' own (tanh, no LayerNorm) on CORA Table V's rows, which leave the
# network open; on-policy's (ReLU, LayerNorms on the input and after each hidden layer) on ILVF Table 1's.
OWN_NET, TABLE1_NET = ("tanh", False, False), ("relu", True, True)
FAMILY_COLUMNS = ("learning_rate", "critic_learning_rate", "clip_coef", "ent_coef", "num_envs", "update_epochs",
                  "num_minibatches", "activation", "feature_norm", "layer_norm")
FAMILY_DEFAULTS = {  # family or family:scenario -> (the row, its values of FAMILY_COLUMNS)
    "matrix": ("CORA Table V: matrix games", (5e-4, 5e-3, 0.3, 1e-3, 4, 10, 1, *OWN_NET)),
    "vmas:navigation": ("CORA Table V: VMAS (Navigation)", (5e-4, 5e-3, 0.2, 1e-4, 64, 10, 4, *OWN_NET)),
    "vmas": ("CORA Table V: VMAS (others)", (5e-4, 5e-3, 0.2, 1e-4, 16, 10, 4, *OWN_NET)),
    **dict.fromkeys(("smac", "smacv2"), ("CORA Table V: SMAC", (5e-4, 5e-4, 0.2, 1e-3, 20, 10, 4, *OWN_NET))),
    "smax": ("CORA Table V: SMAC (SMAX borrows the SMAC row)", (5e-4, 5e-4, 0.2, 1e-3, 20, 10, 4, *OWN_NET)),
    "grf": ("CORA Table V: GRF", (5e-4, 5e-4, 0.2, 1e-3, 50, 10, 4, *OWN_NET)),
    **dict.fromkeys(("mpe", "pcp", "cacc", "coupled", "atsc"), ("ILVF Table 1", (8e-5, 8e-5, 0.2, 1e-2, 4, 15, 1, *TABLE1_NET))),
}

# The valid range of every numeric flag, checked before anything starts.
FLAG_RANGES = {
    "seed": ">= 0", "eval_interval": ">= 0", "eval_episodes": ">= 1", "threads": ">= 1",
    "total_timesteps": ">= 1", "num_envs": ">= 1", "num_steps": ">= 1",
    "learning_rate": "> 0", "critic_learning_rate": "> 0", "gamma": "in [0, 1]", "gae_lambda": "in [0, 1]",
    "num_minibatches": ">= 1", "update_epochs": ">= 1", "clip_coef": "> 0", "huber_delta": ">= 0",
    "ent_coef": ">= 0", "max_grad_norm": "> 0", "target_kl": "> 0", "hidden_dim": ">= 1", "num_layers": ">= 1"
}


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


class Actor(nn.Module):
    """Shared policy: obs [..., n, obs_dim] -> masked logits [..., n, A]."""

    def __init__(self, obs_dim, n_agents, n_actions, hidden, agent_id, **net):
        super().__init__()
        self.agent_id = agent_id
        self.register_buffer("ids", torch.eye(n_agents))
        self.net = mlp(obs_dim + (n_agents if agent_id else 0), hidden, n_actions, 0.01, **net)

    def forward(self, obs, avail):
        if self.agent_id:
            obs = torch.cat([obs, self.ids.expand(*obs.shape[:-1], -1)], -1)
        return self.net(obs).masked_fill(~avail, -1e10)

    def dist(self, obs, avail):
        return Categorical(logits=self(obs, avail))


class Actors(nn.Module):
    """One policy network per agent (no parameter sharing). forward: all agents at once, obs
    [..., n, obs_dim] -> masked logits [..., n, A] (`stacked_forward`: one batched matmul per layer,
    no loop over samples or agents); agent_dist(k, ...): agent k alone, which HAPPO's sequential
    update differentiates."""

    def __init__(self, obs_dim, n_agents, n_actions, hidden, **net):
        super().__init__()
        self.agents = nn.ModuleList(mlp(obs_dim, hidden, n_actions, 0.01, **net) for _ in range(n_agents))

    def forward(self, obs, avail):
        return stacked_forward(self.agents, obs).masked_fill(~avail, -1e10)

    def dist(self, obs, avail):
        return Categorical(logits=self(obs, avail))

    def agent_dist(self, k, obs_k, avail_k):
        """Agent k's policy on its own observations obs_k [..., obs_dim]."""
        return Categorical(logits=self.agents[k](obs_k).masked_fill(~avail_k, -1e10))


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

    envs = make_envs(args, device, "discrete")
    spec = envs.spec
    n, A = spec.n_agents, spec.n_actions

    net = dict(layers=args.num_layers, activation=args.activation, feature_norm=args.feature_norm,
               layer_norm=args.layer_norm)  # the MLPs' shape (on-policy's flags)
    if args.share_actor:
        actor = Actor(spec.obs_dim, n, A, args.hidden_dim, args.agent_id, **net).to(device)
    else:
        actor = Actors(spec.obs_dim, n, A, args.hidden_dim, **net).to(device)
    critic = Critic(spec.state_dim, args.hidden_dim, **net).to(device)
    value_rms = RunningMeanStd().to(device)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, eps=1e-5)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_learning_rate, eps=1e-5)

    models = {"actor": actor, "critic": critic, "value_rms": value_rms}
    optimizers = {"actor": actor_optimizer, "critic": critic_optimizer}

    def greedy(step, memory):  # the greedy actions, for the evaluations (memory: a recurrent policy's)
        return actor(step.obs, step.avail_actions).argmax(-1), None

    run = Run(args, run_name, ckpt, envs, models, optimizers, {}, "discrete", greedy)
    writer = run.writer

    def value_of(state):
        """V(s) in return units (denormalized when value normalization is on)."""
        v = critic(state)
        return value_rms.denormalize(v) if args.value_norm else v

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

    step = envs.reset()
    global_step, done_iterations = run.resume()  # the checkpoint's position and RNG streams, or 0, 0
    mean_return = float("nan")  # of the episodes that ended in the latest rollout that had any
    next_done = torch.zeros(E, device=device)
    with run:  # Ctrl-C, SIGTERM or a crash saves the last whole iteration (Run.__exit__)
        for iteration in range(done_iterations + 1, args.num_iterations + 1):
            watch = Stopwatch(device)  # time/..._ms: this iteration's stages
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                actor_optimizer.param_groups[0]["lr"] = frac * args.learning_rate
                critic_optimizer.param_groups[0]["lr"] = frac * args.critic_learning_rate

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
                    dist = actor.dist(step.obs, step.avail_actions)
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

            watch.lap("time/rollout_ms")

            # ---- GAE ----------------------------------------------------------------------
            with torch.no_grad():
                next_value = value_of(step.state)
                advantages = compute_gae(rewards, values, dones, next_value, next_done,
                                         args.gamma, args.gae_lambda)  # [T, E]
                returns = advantages + values
                if args.value_norm:
                    value_rms.update(returns)
                    old_v = value_rms.normalize(values)
                    targets = value_rms.normalize(returns)
                else:
                    old_v, targets = values, returns

            watch.lap("time/gae_ms")

            # ---- PPO update ---------------------------------------------------------------
            b_obs, b_state, b_avail = obs.flatten(0, 1), state.flatten(0, 1), avail.flatten(0, 1)
            b_active = active.flatten(0, 1)  # [B, n]
            b_actions, b_logprobs = actions.flatten(0, 1), logprobs.flatten(0, 1)  # [B, n]
            b_advantages = advantages.flatten()  # [B]: the global advantage of every agent
            b_old_v, b_targets = old_v.flatten(), targets.flatten()
            clipfracs = []
            for epoch in range(args.update_epochs):
                b_inds = torch.randperm(args.batch_size, device=device)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb = b_inds[start : start + args.minibatch_size]
                    dist = actor.dist(b_obs[mb], b_avail[mb])
                    newlogprob = dist.log_prob(b_actions[mb])  # [M, n]
                    mb_active = b_active[mb]
                    entropy = masked_mean(dist.entropy(), mb_active)
                    logratio = newlogprob - b_logprobs[mb]
                    ratio = logratio.exp()
                    with torch.no_grad():
                        approx_kl = masked_mean((ratio - 1) - logratio, mb_active)
                        clipfracs.append(masked_mean(((ratio - 1.0).abs() > args.clip_coef).float(), mb_active))

                    mb_adv = b_advantages[mb]
                    if args.norm_adv:
                        mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    mb_adv = mb_adv.unsqueeze(-1)  # [M, 1] broadcast over agents
                    pg_loss1 = -mb_adv * ratio
                    pg_loss2 = -mb_adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mb_active)
                    actor_loss = pg_loss - args.ent_coef * entropy
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
                    actor_optimizer.step()

                    v_loss = value_loss(critic(b_state[mb]), b_old_v[mb], b_targets[mb],
                                        args.clip_coef, args.clip_vloss, args.huber_delta)
                    critic_optimizer.zero_grad()
                    v_loss.backward()
                    nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
                    critic_optimizer.step()

                if args.target_kl is not None and approx_kl > args.target_kl:
                    break

            watch.lap("time/update_ms")

            # ---- logging ------------------------------------------------------------------
            y_pred, y_true = values.flatten(), returns.flatten()
            var_y = y_true.var()
            explained_var = float("nan") if var_y == 0 else float(1 - (y_true - y_pred).var() / var_y)
            writer.add_scalar("charts/learning_rate", actor_optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/critic_learning_rate", critic_optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
            writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
            writer.add_scalar("losses/entropy", entropy.item(), global_step)
            writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
            writer.add_scalar("losses/clipfrac", torch.stack(clipfracs).mean().item(), global_step)
            writer.add_scalar("losses/explained_variance", explained_var, global_step)
            count = int(ep_count)
            if count:
                mean_return = ep_return_sum.item() / count
                writer.add_scalar("charts/episodic_return", mean_return, global_step)
                writer.add_scalar("charts/episodic_length", ep_length_sum.item() / count, global_step)
                if spec.has_win:
                    writer.add_scalar("charts/win_rate", ep_win_sum.item() / count, global_step)
            run.end_iteration(iteration, global_step, watch, mean_return)  # snapshot, timings, SPS, evaluation, progress


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
