"""Cooperative matrix games (CORA paper, §V-A, and classic one-step games).

Scenarios (`matrix:<name>`):
  team[-NxA]        Matrix Team Game: one payoff table per step, entries U[-10, 20] drawn from the
                    seed, 10 steps, every agent observes the one-hot step index (default 3x5).
  peaks<K>[-NxA]    Multi-Peak variant (the paper's K = 5, 10, 15): background U[-10, 0] with K
                    peaks per step at distinct joint actions; one global peak of value 20, the
                    others local peaks U[8, 16].
  climbing          Claus & Boutilier's climbing game (2 agents x 3 actions, one step, optimum 11).
  penalty[,k=K]     The penalty game, miscoordination penalty k <= 0 (default -100; 2 x 3, one
                    step, optimum 10). With k = 0 plain policy gradient finds the optimum.
  stag[-NxA]        An n-agent stag hunt (default 3 x 3, one step, optimum 10; n >= 3): the payoff
                    depends only on k, the number of agents on action 0 (the stag): 5 if nobody
                    hunts it, -10 for a lone hunter, 5 for a partial hunt (1 < k < n), 10 when all
                    hunt it. A single agent's switch to the stag is punished unless others join, but
                    two hunters already break even: pair coalitions see what singletons do not.
The climbing and penalty games are the textbook cases of relative overgeneralization: the
optimal joint action is surrounded by heavy miscoordination penalties, so agents that average
over their partner's exploration prefer the safe, suboptimal actions.
The team reward is the payoff; each agent's individual reward is payoff / n.
"""

from __future__ import annotations

import re

import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

CLIMBING = [[11.0, -30.0, 0.0], [-30.0, 7.0, 6.0], [0.0, 0.0, 5.0]]
DEFAULT_PENALTY = -100.0


def penalty_game(k: float) -> list[list[float]]:
    return [[10.0, 0.0, k], [0.0, 2.0, 0.0], [k, 0.0, 10.0]]


TEAM_STEPS = 10
PEAK_VALUE, LOCAL_PEAK_RANGE = 20.0, (8.0, 16.0)
SCENARIOS = "team[-NxA], peaks<K>[-NxA] (the paper: K = 5, 10, 15), climbing, penalty[,k=K], stag[-NxA]"
STAG = (5.0, -10.0, 5.0, 10.0)  # all hare, a lone stag hunter, a partial hunt, everyone on the stag
_STAG = re.compile(r"^stag(?:-(\d+)x(\d+))?$")


def stag_hunt(n: int, A: int) -> torch.Tensor:
    """Payoff table [A]*n of the n-agent stag hunt: the reward depends on k, the number of agents
    on action 0 (the stag): 5 for k = 0, -10 for k = 1, 5 for 1 < k < n and 10 for k = n."""
    grids = torch.meshgrid(*[torch.arange(A)] * n, indexing="ij")
    k = sum((g == 0).long() for g in grids)
    all_hare, lone, partial, everyone = STAG
    table = torch.full(k.shape, partial)
    table[k == 0], table[k == 1], table[k == n] = all_hare, lone, everyone
    return table


_PATTERN = re.compile(r"^(team|peaks(\d+))(?:-(\d+)x(\d+))?$")


def make_payoffs(scenario: str, seed: int, options: dict[str, str]) -> torch.Tensor:
    """Payoff tables [T, A, ..., A] (one axis per agent) for a scenario name."""
    if options and scenario != "penalty":
        raise EnvError(f"matrix:{scenario} takes no options, got {sorted(options)} (only matrix:penalty takes one: k=<float <= 0>)")
    if set(options) - {"k"}:
        raise EnvError(f"matrix:penalty takes one option, k=<float <= 0>, not {sorted(set(options) - {'k'})}")
    if scenario == "climbing":
        return torch.tensor([CLIMBING])
    if scenario == "penalty":
        try:
            k = float(options.get("k", DEFAULT_PENALTY))
        except ValueError:
            k = 1.0
        if not k <= 0:
            raise EnvError(f"matrix:penalty: k must be a number <= 0, got '{options['k']}'")
        return torch.tensor([penalty_game(k)])
    stag = _STAG.match(scenario)
    if stag is not None:
        n, A = int(stag.group(1) or 3), int(stag.group(2) or 3)
        if n < 3 or A < 2 or A**n > 10**7:
            raise EnvError(f"matrix:{scenario}: need n >= 3, A >= 2 and A^n <= 1e7 joint actions")
        return stag_hunt(n, A)[None]
    match = _PATTERN.match(scenario)
    if match is None:
        raise EnvError(f"unknown matrix scenario '{scenario}'; valid: {SCENARIOS}")
    name, peaks, n, A = match.groups()
    n, A = int(n or 3), int(A or 5)
    if n < 1 or A < 2 or A**n > 10**7:
        raise EnvError(f"matrix:{scenario}: need n >= 1, A >= 2 and A^n <= 1e7 joint actions")
    gen = torch.Generator().manual_seed(seed)
    shape = (TEAM_STEPS, A**n)
    if peaks is None:  # Matrix Team Game
        table = torch.rand(shape, generator=gen) * 30.0 - 10.0
    else:  # Multi-Peak: negative background, K peaks, the first one global
        K = int(peaks)
        if not 1 <= K <= A**n:
            raise EnvError(f"matrix:{scenario}: need 1 <= K <= A^n = {A**n} peaks")
        table = -10.0 * torch.rand(shape, generator=gen)
        where = torch.stack([torch.randperm(A**n, generator=gen)[:K] for _ in range(TEAM_STEPS)])
        lo, hi = LOCAL_PEAK_RANGE
        heights = lo + (hi - lo) * torch.rand(TEAM_STEPS, K, generator=gen)
        heights[:, 0] = PEAK_VALUE
        table.scatter_(1, where, heights)
    return table.view(TEAM_STEPS, *([A] * n))


class MatrixGame(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options=None):
        payoffs = make_payoffs(scenario, seed, options or {})
        T, n, A = payoffs.shape[0], payoffs.dim() - 1, payoffs.shape[1]
        spec = EnvSpec(
            env_id=env_id, n_agents=n, obs_dim=T, state_dim=T, agent_state_dim=T,
            episode_limit=T, discrete=True, n_actions=A,
            optimal_return=float(payoffs.flatten(1).max(1).values.sum()),
        )
        super().__init__(spec, num_envs, device)
        self.payoffs = payoffs.flatten(1).to(self.device)  # [T, A^n]
        # joint index = sum_i a_i * A^(n-1-i)  (row-major over agents)
        self._place = (A ** torch.arange(n - 1, -1, -1)).to(self.device)  # [n]
        self._eye = torch.eye(T, device=self.device)

    def payoff(self, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Team payoff of joint actions [E,n] at steps t [E]."""
        return self.payoffs[t, (actions * self._place).sum(-1)]

    def reward_of(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The payoff of joint actions [..., n] at states [..., T] (the one-hot step): the next
        state is the next step whatever the actions."""
        return self.payoff(state.argmax(-1), actions)

    def _reset_envs(self, mask):
        pass  # the only state is the step counter, which the base class resets

    def _observe(self):
        E, n, A = self.num_envs, self.spec.n_agents, self.spec.n_actions
        state = self._eye[self._t.clamp(max=self.spec.episode_limit - 1)]  # one-hot step [E,T]
        obs = state.unsqueeze(1).expand(E, n, -1)
        avail = torch.ones(E, n, A, dtype=torch.bool, device=self.device)
        return obs, state, obs, avail

    def _transition(self, actions):
        reward = self.payoff(self._t, actions)
        terminated = self._t + 1 >= self.spec.episode_limit
        return self._split_shared(reward), terminated, None
