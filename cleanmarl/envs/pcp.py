"""Predator-Capture-Prey (Seraj et al. 2022, as the ILVF paper uses it, Appendix B.1, Fig. 6).

`pcp:` or `pcp:default`, options `dim=D` (grid side, default 5), `vision=V` (perception range,
default 1: a 3x3 view), `max_steps=T` (default 20). The ILVF paper fixes only the roles; the
rules below follow Seraj et al.'s released PCP environment and every number not in the paper is
our choice, stated here.

Agents 1-4 are perception agents, agents 5-8 action agents; one static prey. Start positions: all
9 on distinct cells, uniform over the D x D grid. Actions (all agents, Seraj et al.'s order):
0 up, 1 right, 2 down, 3 left, 4 stay, 5 capture; moves stop at the border and agents may share
cells. Perception agents cannot capture (5 is a stay for them); an action agent's capture succeeds
when it stands on the prey's cell. An agent that has reached the prey's cell stays there: a
perception agent for good, an action agent until it captures (only 5 does anything there).

Rewards per agent and step (Seraj et al.'s "mixed" mode, the sum is the team reward):
    perception agent: 0 once it has reached the prey, else -0.05;
    action agent:     0 once it has captured the prey, else -0.05.
The episode terminates with a win when every agent has reached the prey and every action agent
has captured it; it is truncated after `max_steps`.

Observation and the communication graph. A perception agent sees the (2V+1)² cells around it,
4 channels per cell: prey present, number of perception agents, number of action agents, outside
the grid. Action agents see nothing of the grid (only their own position and flags) and hear two
perception agents through a fixed bipartite ring: action agent 4 + k hears perception agents k and
k + 1 (mod 4), k = 1..4, receiving their positions and views. Observation layout (every agent):
[own position (2), reached, captured, own view, heard position + view, heard position + view];
the blind and the unheard parts are zeros. Positions are scaled to [0, 1] by D - 1.
agent_state: [position (2), prey - position (2), reached, captured]; state: all agent states,
the prey's position and the elapsed fraction of the episode.
"""

from __future__ import annotations

import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

N_PERCEPTION, N_ACTION = 4, 4
STEP_PENALTY = -0.05
MOVES = [(-1, 0), (0, 1), (1, 0), (0, -1), (0, 0), (0, 0)]  # up, right, down, left, stay, capture
CAPTURE = 5
DEFAULTS = {"dim": 5, "vision": 1, "max_steps": 20}
CHANNELS = 4  # prey, perception agents, action agents, outside


def heard_by(k: int) -> tuple[int, int]:
    """The perception agents (0-based) that action agent k (0-based among action agents) hears."""
    return k, (k + 1) % N_PERCEPTION


class PredatorCapturePrey(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options: dict):
        if scenario not in ("", "default"):
            raise EnvError(f"unknown pcp scenario '{scenario}'; valid: pcp: or pcp:default with options "
                           "dim=D, vision=V, max_steps=T (e.g. pcp:default,dim=10)")
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise EnvError(f"pcp takes options dim=D, vision=V, max_steps=T, not {sorted(unknown)}")
        try:
            cfg = {k: int(options.get(k, v)) for k, v in DEFAULTS.items()}
        except ValueError:
            cfg = {"dim": 0}
        if cfg["dim"] < 3 or cfg.get("vision", -1) < 0 or cfg.get("max_steps", 0) < 1:
            raise EnvError("pcp: need integers dim >= 3, vision >= 0, max_steps >= 1")
        self.dim, self.vision = cfg["dim"], cfg["vision"]
        n = N_PERCEPTION + N_ACTION
        self.view_dim = CHANNELS * (2 * self.vision + 1) ** 2
        obs_dim = 4 + self.view_dim + 2 * (2 + self.view_dim)
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=obs_dim, state_dim=6 * n + 3, agent_state_dim=6,
                       episode_limit=cfg["max_steps"], discrete=True, n_actions=len(MOVES), has_win=True)
        super().__init__(spec, num_envs, device)
        # rewards and moves are each agent's own; an action agent's value depends on the two
        # perception agents it hears (what they see is all it learns of the prey): the
        # communication graph, as the ILVF paper's Fig. 6 draws it
        self.influence_graph = torch.eye(N_PERCEPTION + N_ACTION, dtype=torch.bool, device=self.device)
        for k in range(N_ACTION):
            self.influence_graph[N_PERCEPTION + k, list(heard_by(k))] = True
        E, dev = num_envs, self.device
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.moves = torch.tensor(MOVES, device=dev)
        self.is_action = torch.arange(n, device=dev) >= N_PERCEPTION  # [n]
        self.heard = torch.tensor([heard_by(k) for k in range(N_ACTION)], device=dev)  # [4, 2]
        self.pos = torch.zeros(E, n, 2, dtype=torch.long, device=dev)
        self.prey = torch.zeros(E, 2, dtype=torch.long, device=dev)
        self.reached = torch.zeros(E, n, dtype=torch.bool, device=dev)
        self.captured = torch.zeros(E, n, dtype=torch.bool, device=dev)  # only action agents' entries change
        w = 2 * self.vision + 1
        off = torch.arange(w, device=dev)
        self.window = (off.view(w, 1) * (self.dim + 2 * self.vision) + off.view(1, w)).flatten()  # [w²]

    def _reset_envs(self, mask):
        E, n, D = self.num_envs, self.spec.n_agents, self.dim
        cells = torch.rand(E, D * D, generator=self.gen, device=self.device).argsort(-1)[:, : n + 1]  # distinct
        rc = torch.stack([cells // D, cells % D], -1)  # [E, n+1, 2]
        m = mask.view(E, 1, 1)
        self.pos = torch.where(m, rc[:, :n], self.pos)
        self.prey = torch.where(mask.view(E, 1), rc[:, n], self.prey)
        self.reached = self.reached & ~mask.view(E, 1)
        self.captured = self.captured & ~mask.view(E, 1)

    def views(self) -> torch.Tensor:
        """Every agent's (2V+1)² x 4 view of the grid around it: [E, n, view_dim]."""
        E, n, V = self.num_envs, self.spec.n_agents, self.vision
        P = self.dim + 2 * V
        grid = torch.zeros(E, CHANNELS, P, P, device=self.device)
        grid[:, 3] = 1.0
        grid[:, 3, V:V + self.dim, V:V + self.dim] = 0.0
        flat = grid.view(E, CHANNELS, P * P)
        cell = (self.pos[..., 0] + V) * P + self.pos[..., 1] + V  # [E, n] padded cell index
        ones = torch.ones(E, n, device=self.device)
        flat[:, 1].scatter_add_(1, cell, ones * ~self.is_action)
        flat[:, 2].scatter_add_(1, cell, ones * self.is_action)
        flat[:, 0].scatter_(1, ((self.prey[:, 0] + V) * P + self.prey[:, 1] + V).unsqueeze(1), 1.0)
        corner = self.pos[..., 0] * P + self.pos[..., 1]  # window's top-left in padded coordinates
        idx = (corner.unsqueeze(-1) + self.window).unsqueeze(2).expand(E, n, CHANNELS, -1)  # [E, n, C, w²]
        return flat.unsqueeze(1).expand(E, n, CHANNELS, P * P).gather(3, idx).flatten(2)

    def _observe(self):
        E, n = self.num_envs, self.spec.n_agents
        scale = 1.0 / (self.dim - 1)
        pos = self.pos.float() * scale
        flags = torch.stack([self.reached, self.captured], -1).float()
        view = self.views() * ~self.is_action.view(1, n, 1)  # action agents are blind
        told = torch.cat([pos, view], -1)[:, :N_PERCEPTION]  # what each perception agent sends [E, 4, 2+view]
        heard = told[:, self.heard].flatten(2)  # [E, 4 action agents, 2 (2+view)]
        heard = torch.cat([torch.zeros_like(heard), heard], 1)  # perception agents hear no one
        obs = torch.cat([pos, flags, view, heard], -1)
        agent_state = torch.cat([pos, (self.prey.unsqueeze(1) - self.pos).float() * scale, flags], -1)
        elapsed = (self._t.float() / self.spec.episode_limit).unsqueeze(-1)
        state = torch.cat([agent_state.flatten(1), self.prey.float() * scale, elapsed], -1)
        avail = torch.ones(E, n, self.spec.n_actions, dtype=torch.bool, device=self.device)
        return obs, state, agent_state, avail

    def _transition(self, actions):
        on_prey = (self.pos == self.prey.unsqueeze(1)).all(-1)
        self.captured |= self.is_action & (actions == CAPTURE) & on_prey
        frozen = self.reached.unsqueeze(-1)  # whoever reached the prey stays on it
        self.pos = torch.where(frozen, self.pos, (self.pos + self.moves[actions]).clamp(0, self.dim - 1))
        on_prey = (self.pos == self.prey.unsqueeze(1)).all(-1)
        self.reached |= on_prey
        done_own_part = torch.where(self.is_action, self.captured, self.reached)
        reward = torch.where(done_own_part, 0.0, STEP_PENALTY)
        win = self.reached.all(-1) & self.captured[:, N_PERCEPTION:].all(-1)
        return reward, win, win
