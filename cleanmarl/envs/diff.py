"""Differential games (CORA paper, §V-B, Eq. 25, and the 5-agent variant of Fig. 8).

Scenarios (`diff:<n>agents[-<K>fields]`, e.g. `diff:2agents`, `diff:5agents-12fields`): each of the
n agents picks one value x_i in [-5, 5]; the team reward is a sum of K Gaussian potential fields

    R(x) = sum_k h_k * exp(-||x - c_k||^2 / sigma_k^2)                           (Eq. 25)

with heights h_k ~ U[5, 10], spreads sigma_k ~ U[1, 2] and centres c_k ~ U[-4, 4]^n drawn from the
seed (inside the action box, so every peak is reachable). The state never changes: an episode is
one play of the game, repeated across episodes. Each agent observes a constant 1; its individual
reward is R / n. Defaults: 6 fields for 2 agents, 10 for more. The optimum is found once at
construction by gradient ascent started from every centre.
"""

from __future__ import annotations

import re

import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

BOUND = 5.0
CENTRE_RANGE = 4.0
HEIGHT_RANGE, SPREAD_RANGE = (5.0, 10.0), (1.0, 2.0)
SCENARIOS = "<n>agents[-<K>fields], e.g. 2agents, 5agents, 5agents-12fields"
_PATTERN = re.compile(r"^(\d+)agents(?:-(\d+)fields)?$")


def make_fields(n: int, K: int, seed: int):
    """Centres [K,n], heights [K], spreads [K] of the potential fields, from the seed."""
    gen = torch.Generator().manual_seed(seed)
    centres = (2 * torch.rand(K, n, generator=gen) - 1) * CENTRE_RANGE
    heights = HEIGHT_RANGE[0] + (HEIGHT_RANGE[1] - HEIGHT_RANGE[0]) * torch.rand(K, generator=gen)
    spreads = SPREAD_RANGE[0] + (SPREAD_RANGE[1] - SPREAD_RANGE[0]) * torch.rand(K, generator=gen)
    return centres, heights, spreads


def potential(x: torch.Tensor, centres, heights, spreads) -> torch.Tensor:
    """Eq. (25): x [..., n] -> R(x) [...]."""
    sq_dist = ((x.unsqueeze(-2) - centres) ** 2).sum(-1)  # [..., K]
    return (heights * torch.exp(-sq_dist / spreads**2)).sum(-1)


def maximize(centres, heights, spreads, iters: int = 500) -> float:
    """Global maximum of Eq. (25) on the box: projected gradient ascent from every centre."""
    c, h, s = centres.double(), heights.double(), spreads.double()
    x = c.clone().requires_grad_(True)  # one start per centre (peaks of a sum sit near centres)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(iters):
        opt.zero_grad()
        (-potential(x, c, h, s).sum()).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(-BOUND, BOUND)
    with torch.no_grad():
        return float(potential(x, c, h, s).max())


class DifferentialGame(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device):
        match = _PATTERN.match(scenario)
        if match is None:
            raise EnvError(f"unknown diff scenario '{scenario}'; valid: {SCENARIOS}")
        n = int(match.group(1))
        K = int(match.group(2) or (6 if n <= 2 else 10))
        if n < 1 or K < 1:
            raise EnvError(f"diff:{scenario}: need at least one agent and one field")
        centres, heights, spreads = make_fields(n, K, seed)
        spec = EnvSpec(
            env_id=env_id, n_agents=n, obs_dim=1, state_dim=1, agent_state_dim=1,
            episode_limit=1, discrete=False, action_dim=1, action_low=-BOUND, action_high=BOUND,
            optimal_return=maximize(centres, heights, spreads),
        )
        super().__init__(spec, num_envs, device)
        self.centres, self.heights, self.spreads = (t.to(self.device) for t in (centres, heights, spreads))

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        return potential(x, self.centres, self.heights, self.spreads)

    def reward_of(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """R of joint actions [..., n, 1], clipped to the box as `step` clips them (one-step game)."""
        return self.reward(actions[..., 0].clamp(-BOUND, BOUND))

    def _reset_envs(self, mask):
        pass  # stateless

    def _observe(self):
        E, n = self.num_envs, self.spec.n_agents
        obs = torch.ones(E, n, 1, device=self.device)
        avail = torch.ones(E, n, 1, dtype=torch.bool, device=self.device)
        return obs, torch.ones(E, 1, device=self.device), obs, avail

    def _transition(self, actions):
        reward = self.reward(actions[..., 0])  # [E]
        terminated = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return self._split_shared(reward), terminated, None
