"""MPE Encircle (ILVF paper, Appendix B.1, Eq. 17-18, Fig. 5).

`mpe:encircle-<n>[,max_steps=T][,obstacles=K]`, n even and at least 4 (the paper: 8 and 20).
n point-mass agents start away from a target landmark, bypass static obstacles, and encircle the
target at distance 0.7 with equal angular spacing 2π/n.

Agents are numbered 1..n as in the paper and sit on a ring: agent i's neighbours are i - 1 and
i + 1 (mod n), so an odd agent's neighbours are even and an even agent's are odd (n even).
The coupling graph (Fig. 5, written out from the text of Appendix B.1):
  observation  odd agent i observes the states of even agents i - 1 and i + 1;
               even agents observe no other agent;
  reward       odd agent i:  r_i = -0.1 (d_i - 0.7)²                      (N_i^R = ∅)
               even agent i: r_i = -0.1 (d_i - 0.7)² - Σ_{j ∈ {i-1, i+1}} (l_ij - 2π/n)²
                                                                   (Eq. 17-18, N_i^R = {i-1, i+1})
  transition   each agent's next state depends on its own state and action only.
d_i is agent i's distance to the target, l_ij ∈ [0, π] the (unsigned) angle between the vectors
from the target to agents i and j. Code indices are 0-based: paper agent i is index i - 1, so the
paper's odd agents are the even indices.

Dynamics (the multi-agent particle envs' double integrator): 5 discrete actions (0 no-op, 1 +x,
2 -x, 3 +y, 4 -y) give a force 5·(±1) along an axis; each step (dt = 0.1) v ← 0.75 v + dt F,
p ← p + dt v (damping 0.25, mass 1, no speed cap). Agents have no volume and pass through each
other; an obstacle of radius 0.15 pushes an agent out with MPE's soft contact force
100 · log(1 + exp(-(dist - 0.15)/0.001)) · 0.001 along the line from its centre.

Episode start (seeded): the target uniform in [-0.25, 0.25]²; K obstacles (default 4) at random
angles and distance U[0.9, 1.2] from the target; agents at random angles and distance U[1.5, 2.0].
Episodes last 50 steps (`max_steps`); nothing terminates them early.

Observation of agent i: own velocity, position, target - position, obstacles - position (2K),
then two neighbour slots [p_j - p_i, v_j] for j = i - 1, i + 1 (zeros for even agents).
agent_state: the agent's own part (the first 6 + 2K entries). state: target, obstacles, every
agent's position and velocity.
"""

from __future__ import annotations

import math
import re

import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

DT, DAMPING, MASS, SENSITIVITY = 0.1, 0.25, 1.0, 5.0
CONTACT_FORCE, CONTACT_MARGIN = 100.0, 1e-3
OBSTACLE_RADIUS = 0.15
RING_RADIUS, DIST_WEIGHT = 0.7, 0.1
TARGET_RANGE = 0.25
OBSTACLE_DIST, START_DIST = (0.9, 1.2), (1.5, 2.0)
DEFAULT_STEPS, DEFAULT_OBSTACLES = 50, 4
# action -> unit force direction (MPE's discrete order)
DIRECTIONS = [(0.0, 0.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)]
_PATTERN = re.compile(r"^encircle-(\d+)$")
SCENARIOS = "encircle-<n> with n even >= 4 (the paper: encircle-8, encircle-20); options max_steps=T, obstacles=K"


def angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Unsigned angle in [0, π] between 2-D vectors a and b [..., 2]."""
    cross = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    dot = (a * b).sum(-1)
    return torch.atan2(cross.abs(), dot)


def encircle_rewards(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. (17)-(18) on the ring coupling graph: pos [E,n,2], target [E,2] -> rewards [E,n]."""
    n = pos.shape[1]
    rel = pos - target.unsqueeze(1)
    d = rel.norm(dim=-1)
    spacing = 2 * math.pi / n
    prev, nxt = rel.roll(1, dims=1), rel.roll(-1, dims=1)  # agents i - 1 and i + 1
    coupling = (angle_between(rel, prev) - spacing) ** 2 + (angle_between(rel, nxt) - spacing) ** 2
    paper_odd = torch.arange(n, device=pos.device) % 2 == 0  # index 0 is the paper's agent 1
    return -DIST_WEIGHT * (d - RING_RADIUS) ** 2 - torch.where(paper_odd, torch.zeros_like(coupling), coupling)


class Encircle(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options: dict):
        match = _PATTERN.match(scenario)
        if match is None or int(match.group(1)) < 4 or int(match.group(1)) % 2:
            raise EnvError(f"unknown mpe scenario '{scenario}'; valid: {SCENARIOS}")
        unknown = set(options) - {"max_steps", "obstacles"}
        if unknown:
            raise EnvError(f"mpe:{scenario} takes options max_steps=T and obstacles=K, not {sorted(unknown)}")
        try:
            steps = int(options.get("max_steps", DEFAULT_STEPS))
            K = int(options.get("obstacles", DEFAULT_OBSTACLES))
        except ValueError:
            steps = K = -1
        if steps < 1 or K < 0:
            raise EnvError(f"mpe:{scenario}: max_steps must be an integer >= 1 and obstacles >= 0")
        n = int(match.group(1))
        own = 6 + 2 * K
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=own + 8, state_dim=2 + 2 * K + 4 * n,
                       agent_state_dim=own, episode_limit=steps, discrete=True, n_actions=len(DIRECTIONS))
        super().__init__(spec, num_envs, device)
        self.influence_graph = torch.eye(n, dtype=torch.bool, device=self.device)
        for k in range(1, n, 2):  # the paper's even agents' rewards read their two neighbours' positions
            self.influence_graph[k, [(k - 1) % n, (k + 1) % n]] = True
        E, dev = num_envs, self.device
        self.K = K
        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.directions = torch.tensor(DIRECTIONS, device=dev)
        self.pos = torch.zeros(E, n, 2, device=dev)
        self.vel = torch.zeros(E, n, 2, device=dev)
        self.target = torch.zeros(E, 2, device=dev)
        self.obstacles = torch.zeros(E, K, 2, device=dev)
        self.observer = (torch.arange(n, device=dev) % 2 == 0).view(1, n, 1)  # the paper's odd agents

    def _around(self, centre, count, dist_range):
        """`count` points at uniform angles and distances in dist_range from centre [E,2]."""
        E = self.num_envs
        angle = 2 * math.pi * torch.rand(E, count, generator=self.gen, device=self.device)
        lo, hi = dist_range
        dist = lo + (hi - lo) * torch.rand(E, count, generator=self.gen, device=self.device)
        return centre.unsqueeze(1) + dist.unsqueeze(-1) * torch.stack([angle.cos(), angle.sin()], -1)

    def _reset_envs(self, mask):
        E = self.num_envs
        target = TARGET_RANGE * (2 * torch.rand(E, 2, generator=self.gen, device=self.device) - 1)
        obstacles = self._around(target, self.K, OBSTACLE_DIST)
        pos = self._around(target, self.spec.n_agents, START_DIST)
        m = mask.view(E, 1, 1)
        self.target = torch.where(mask.view(E, 1), target, self.target)
        self.obstacles = torch.where(m, obstacles, self.obstacles)
        self.pos = torch.where(m, pos, self.pos)
        self.vel = self.vel.masked_fill(m, 0.0)

    def contact_force(self, pos: torch.Tensor) -> torch.Tensor:
        """MPE's soft contact force of the obstacles on point agents: pos [E,n,2] -> [E,n,2]."""
        delta = pos.unsqueeze(2) - self.obstacles.unsqueeze(1)  # [E,n,K,2]
        dist = delta.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        penetration = torch.logaddexp(torch.zeros_like(dist), -(dist - OBSTACLE_RADIUS) / CONTACT_MARGIN) * CONTACT_MARGIN
        return (CONTACT_FORCE * delta / dist * penetration).sum(2)

    def _own(self):
        rel_obstacles = (self.obstacles.unsqueeze(1) - self.pos.unsqueeze(2)).flatten(2)  # [E,n,2K]
        return torch.cat([self.vel, self.pos, self.target.unsqueeze(1) - self.pos, rel_obstacles], -1)

    def _observe(self):
        own = self._own()
        neighbours = [torch.cat([self.pos.roll(s, 1) - self.pos, self.vel.roll(s, 1)], -1) for s in (1, -1)]
        seen = torch.cat(neighbours, -1) * self.observer  # even agents see no one
        obs = torch.cat([own, seen], -1)
        state = torch.cat([self.target, self.obstacles.flatten(1), self.pos.flatten(1), self.vel.flatten(1)], -1)
        avail = torch.ones(self.num_envs, self.spec.n_agents, self.spec.n_actions, dtype=torch.bool, device=self.device)
        return obs, state, own, avail

    def _transition(self, actions):
        force = SENSITIVITY * self.directions[actions] + self.contact_force(self.pos)
        self.vel = self.vel * (1 - DAMPING) + force / MASS * DT
        self.pos = self.pos + self.vel * DT
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return encircle_rewards(self.pos, self.target), terminated, None
