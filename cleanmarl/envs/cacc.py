"""Cooperative adaptive cruise control (Chu, Chinchali & Katti, ICLR 2020; ILVF Appendix B.1).

Scenarios `cacc:catchup` and `cacc:slowdown`, options `eval=1` (drop the training-only safety
term), `scale=<float>` (multiply every reward, default 1: the exact formula; Chu et al. divide
by a reward norm of 2000-5000 in training, `scale=0.0002` gives their 5000) and `max_steps=T`
(a shorter episode than the paper's 600 steps, for tests).

A platoon of 8 vehicles follows a virtual lead vehicle 0; vehicle i (1-based) follows vehicle
i - 1. Every 0.1 s step each vehicle picks one of 4 actions, the optimal-velocity-model (OVM) gains
(α, β) ∈ {(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)} (Chu et al.'s order), and accelerates by

    u = α (V(h) - v) + β (v_lead - v),   V(h) = 0 (h ≤ 5), v_max/2 (1 - cos(π (h - 5)/(35 - 5))) (5 < h < 35),
                                           v_max (h ≥ 35),  v_max = 30 m/s,

clipped to ±2.5 m/s²; the new speed is clipped to [0, v_max] and the applied acceleration is the
realized (v' - v)/dt. Headways integrate the speed difference with the trapezoid rule,
h' = h + dt/2 (v_lead + v_lead' - v - v'). Episodes last 600 steps (60 s).

Reward of vehicle i after the step (h*, v* = 20 m, 15 m/s):
    r_i = -(h_i - 20)² - (v_i - 15)² - 0.1 u_i² - 5 min(h_i - 10, 0)²
where the last term applies in training (the default) and not with `eval=1`. If any headway falls
below 1 m the step is a collision. Chu et al.'s env (`cacc_env.py` in their deeprl_network) then
pays every vehicle -1000 at that step and at every step after it, the platoon frozen, until the
episode ends. Here the collision step pays each vehicle -1000 for every step left in the episode,
that one included (-1000 (T - t) at step t of T), at once, and the episode terminates: the same
undiscounted return, with no frozen steps to pad and no time-limit bootstrap from a crashed state.
A crash costs 8000 per remaining step; the safe fixed policies of docs/envs/cacc.md cost 77
(catch-up) and 460 (slowdown) per step on average, and a test checks that crashing loses to them.

Scenarios (U ~ U[0, 1), one draw per episode):
  catchup   vehicle 1's headway starts at 20 (1.5 + U), the others at 20; every vehicle and the
            lead vehicle drive at 15 m/s throughout the lead's trajectory.
  slowdown  every headway starts at 20 and every speed (followers and lead alike) at 15 (1.5 + U);
            the lead's speed falls linearly to 15 m/s over the first 300 steps (30 s):
            v_lead(t) = v0 + (15 - v0) t / 299 for t < 300, then 15 (Chu et al.'s linspace).

Each vehicle's features (Chu et al.'s, after the step): (v - v*)/v*, clip((v_lead - v)/5, ±2),
clip((V(h) - v)/5, ±2), (h + (v_lead - v) dt - h*)/h*, u/2.5. Observation: its own features, then
those of the vehicle ahead and behind (zeros where there is none) — Chu et al.'s networked
neighbourhood. agent_state: its own features; state: all 8 vehicles' features.
"""

from __future__ import annotations

import math

import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

N_VEHICLES, DT, STEPS = 8, 0.1, 600
H_STOP, H_GO, V_MAX = 5.0, 35.0, 30.0
U_MAX = 2.5
H_STAR, V_STAR = 20.0, 15.0
H_SAFE, SAFE_WEIGHT, U_WEIGHT = 10.0, 5.0, 0.1
H_COLLIDE, COLLISION_PENALTY = 1.0, 1000.0
SLOWDOWN_STEPS = 300
GAINS = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)]  # (α, β) per action
VDIFF_NORM = 5.0
N_FEATURES = 5
SCENARIOS = ("catchup", "slowdown")


def ovm_speed(h: torch.Tensor) -> torch.Tensor:
    """The OVM's optimal velocity V(h)."""
    mid = V_MAX / 2 * (1 - torch.cos(math.pi * (h - H_STOP) / (H_GO - H_STOP)))
    return torch.where(h <= H_STOP, torch.zeros_like(h), torch.where(h >= H_GO, torch.full_like(h, V_MAX), mid))


def vehicle_reward(h, v, u, train: bool) -> torch.Tensor:
    """Chu et al.'s per-vehicle reward without the collision case."""
    r = -(h - H_STAR) ** 2 - (v - V_STAR) ** 2 - U_WEIGHT * u**2
    if train:
        r = r - SAFE_WEIGHT * torch.clamp(h - H_SAFE, max=0.0) ** 2
    return r


class CACC(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options: dict):
        if scenario not in SCENARIOS:
            raise EnvError(f"unknown cacc scenario '{scenario}'; valid: catchup, slowdown "
                           "(options: eval=1, scale=<float>, max_steps=T)")
        unknown = set(options) - {"eval", "scale", "max_steps"}
        if unknown:
            raise EnvError(f"cacc:{scenario} takes options eval=0|1, scale=<float> and max_steps=T, not {sorted(unknown)}")
        if options.get("eval", "0") not in ("0", "1"):
            raise EnvError(f"cacc:{scenario}: eval must be 0 or 1, got '{options['eval']}'")
        try:
            self.scale = float(options.get("scale", 1.0))
        except ValueError:
            raise EnvError(f"cacc:{scenario}: scale must be a number, got '{options['scale']}'") from None
        steps = options.get("max_steps", str(STEPS))
        if not steps.isdigit() or int(steps) < 1:
            raise EnvError(f"cacc:{scenario}: max_steps must be an integer >= 1, got '{steps}'")
        self.train = options.get("eval", "0") == "0"
        self.scenario = scenario
        n = N_VEHICLES
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=3 * N_FEATURES, state_dim=n * N_FEATURES,
                       agent_state_dim=N_FEATURES, episode_limit=int(steps), discrete=True, n_actions=len(GAINS))
        super().__init__(spec, num_envs, device)
        # vehicle i's transition reads the speed of vehicle i - 1 (a crash couples everyone, once)
        self.influence_graph = torch.eye(n, dtype=torch.bool, device=self.device)
        self.influence_graph[torch.arange(1, n), torch.arange(n - 1)] = True
        E = num_envs
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.gains = torch.tensor(GAINS, device=self.device)  # [4, 2]
        self.h = torch.zeros(E, n, device=self.device)  # headway to the vehicle ahead [m]
        self.v = torch.zeros(E, n, device=self.device)  # speed [m/s]
        self.u = torch.zeros(E, n, device=self.device)  # last applied acceleration [m/s²]
        self.v_lead0 = torch.zeros(E, device=self.device)  # the lead vehicle's initial speed

    def lead_speed(self, t: torch.Tensor) -> torch.Tensor:
        """Speed of the virtual lead vehicle at steps t [E]."""
        if self.scenario == "catchup":
            return torch.full_like(self.v_lead0, V_STAR)
        frac = t.to(self.v_lead0.dtype) / (SLOWDOWN_STEPS - 1)
        return torch.where(t < SLOWDOWN_STEPS, self.v_lead0 + (V_STAR - self.v_lead0) * frac,
                           torch.full_like(self.v_lead0, V_STAR))

    def _reset_envs(self, mask):
        U = torch.rand(self.num_envs, generator=self.gen, device=self.device)
        m = mask.unsqueeze(-1)
        h = torch.full_like(self.h, H_STAR)
        v = torch.full_like(self.v, V_STAR)
        if self.scenario == "catchup":
            h[:, 0] = H_STAR * (1.5 + U)
            lead0 = torch.full_like(U, V_STAR)
        else:
            v = (V_STAR * (1.5 + U)).unsqueeze(-1).expand_as(v)
            lead0 = V_STAR * (1.5 + U)
        self.h = torch.where(m, h, self.h)
        self.v = torch.where(m, v, self.v)
        self.u = self.u.masked_fill(m, 0.0)
        self.v_lead0 = torch.where(mask, lead0, self.v_lead0)

    def _features(self, t):
        v_lead = torch.cat([self.lead_speed(t).unsqueeze(-1), self.v[:, :-1]], 1)
        return torch.stack([
            (self.v - V_STAR) / V_STAR,
            ((v_lead - self.v) / VDIFF_NORM).clamp(-2, 2),
            ((ovm_speed(self.h) - self.v) / VDIFF_NORM).clamp(-2, 2),
            (self.h + (v_lead - self.v) * DT - H_STAR) / H_STAR,
            self.u / U_MAX,
        ], -1)  # [E, n, 5]

    def _observe(self):
        f = self._features(self._t)
        zero = torch.zeros_like(f[:, :1])
        ahead = torch.cat([zero, f[:, :-1]], 1)
        behind = torch.cat([f[:, 1:], zero], 1)
        obs = torch.cat([f, ahead, behind], -1)
        avail = torch.ones(self.num_envs, self.spec.n_agents, self.spec.n_actions, dtype=torch.bool, device=self.device)
        return obs, f.flatten(1), f, avail

    def _transition(self, actions):
        t = self._t
        alpha, beta = self.gains[actions].unbind(-1)  # [E, n] each
        v_lead = torch.cat([self.lead_speed(t).unsqueeze(-1), self.v[:, :-1]], 1)
        u = alpha * (ovm_speed(self.h) - self.v) + beta * (v_lead - self.v)
        v_next = (self.v + u.clamp(-U_MAX, U_MAX) * DT).clamp(0.0, V_MAX)
        v_lead_next = torch.cat([self.lead_speed(t + 1).unsqueeze(-1), v_next[:, :-1]], 1)
        self.h = self.h + 0.5 * DT * (v_lead + v_lead_next - self.v - v_next)
        self.u = (v_next - self.v) / DT
        self.v = v_next
        collision = (self.h < H_COLLIDE).any(-1)
        reward = vehicle_reward(self.h, self.v, self.u, self.train)
        left = (self.spec.episode_limit - t).to(reward.dtype)  # steps left, this one included
        reward = torch.where(collision.unsqueeze(-1), -COLLISION_PENALTY * left.unsqueeze(-1), reward)
        return self.scale * reward, collision, None
