"""Small coupled reward-sum games (`coupled:<scenario>`): a fast test bed for influence-based
credit assignment (ILVF), where an agent's own reward misleads it and the agents it affects are few.

Scenario `ring-<n>` (an even number n >= 2 of agents; `coupled:ring` is `ring-4`):
  each agent i has a level x_i in {0, ..., L} (L = 3), starting at 0; its actions are
  0 = down, 1 = stay, 2 = up (x_i <- clip(x_i - 1, x_i, x_i + 1 to [0, L])). After the move,
      r_i = b * x_{i-1} - c * x_i      (indices mod n; b = 3, c = 1),
  so raising x_i costs agent i itself c per level and per step, and pays its successor i + 1
  b per level and per step. The coupling graph is the directed ring i -> i + 1: agent i's state
  enters the reward (and value) of agent i + 1 only. The team reward is (b - c) * sum_i x_i.
  An episode lasts 10 steps (the time limit ends it: `terminated`).
  - individual advantages (IPPO-C) see only -c * x_i: every agent stays at 0, team return 0;
  - the team optimum raises every level as fast as it can: x = 1, 2, 3, 3, ...; optimal return
    n * (b - c) * sum_t min(t, L) = 54 n;
  - agent i's influence-based local value needs V_i and V_{i+1} only (agent i's state has S-V
    influence on agents i and i + 1).
obs: the agent's own level, one-hot [L + 1]. agent_state: the one-hot of (i mod 2, x_i) [2 (L + 1)],
so that a sum of two neighbours' states (ILVF's Q_i sees sum_j w^g_ij s_j) still tells whose level
is whose; state: all agent states concatenated [2 n (L + 1)]. No action masks.
"""

from __future__ import annotations

import re

import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

LEVELS = 3  # L
GAIN, COST = 3.0, 1.0  # b, c
HORIZON = 10
SCENARIOS = "ring-<n> (an even n >= 2 of agents; ring = ring-4)"
_PATTERN = re.compile(r"^ring(?:-(\d+))?$")


class CoupledRing(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options=None):
        match = _PATTERN.match(scenario)
        if match is None or int(match.group(1) or 4) < 2 or int(match.group(1) or 4) % 2:
            raise EnvError(f"unknown coupled scenario '{scenario}'; valid: {SCENARIOS}")
        n = int(match.group(1) or 4)
        d = LEVELS + 1
        best = n * (GAIN - COST) * sum(min(t, LEVELS) for t in range(1, HORIZON + 1))
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=d, state_dim=2 * n * d, agent_state_dim=2 * d,
                       episode_limit=HORIZON, discrete=True, n_actions=3, optimal_return=float(best))
        super().__init__(spec, num_envs, device)
        agents = torch.arange(n, device=self.device)
        self.influence_graph = torch.eye(n, dtype=torch.bool, device=self.device)
        self.influence_graph[agents, (agents - 1) % n] = True  # r_i reads x_{i-1}
        self.level = torch.zeros(num_envs, n, dtype=torch.long, device=self.device)  # x [E, n]
        self._eye = torch.eye(2 * d, device=self.device)
        self._parity = (torch.arange(n, device=self.device) % 2) * d  # offset of (i mod 2) in agent_state
        self._avail = torch.ones(num_envs, n, 3, dtype=torch.bool, device=self.device)

    def _reset_envs(self, mask):
        self.level.masked_fill_(mask.unsqueeze(-1), 0)

    def _observe(self):
        agent_state = self._eye[self.level + self._parity]  # [E, n, 2(L+1)]
        obs = self._eye[self.level, : LEVELS + 1]  # [E, n, L+1]
        return obs, agent_state.flatten(1), agent_state, self._avail

    def _transition(self, actions):
        self.level = (self.level + actions - 1).clamp(0, LEVELS)
        x = self.level.float()
        agent_reward = GAIN * x.roll(1, dims=1) - COST * x  # x.roll(1)[:, i] = x[:, i - 1]
        terminated = self._t + 1 >= HORIZON
        return agent_reward, terminated, None
