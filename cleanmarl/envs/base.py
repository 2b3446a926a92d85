"""The interface every cleanmarl environment implements.

Shapes: E parallel envs, n agents, A discrete actions (or `action_dim` continuous dims).
A family adapter subclasses `MultiAgentEnv` and implements three methods on batched tensors:

    _reset_envs(mask [E] bool)       reset the envs where mask is true (all of them at start)
    _observe() -> (obs [E,n,obs_dim], state [E,state_dim], agent_state [E,n,d], avail [E,n,A])
    _transition(actions) -> (agent_reward [E,n], terminated [E] bool, win [E] bool or None)
and, where agents can die, `_active() -> [E,n] bool` (default: every agent is always active).

The base class adds everything else once for all families: the time limit (`truncated`),
automatic reset, the final observation of a finished episode (to bootstrap truncated ones),
episode statistics, and clipping of continuous actions to their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


class EnvError(ValueError):
    """A user-facing configuration error: scripts print its message as one line and exit."""


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    n_agents: int
    obs_dim: int
    state_dim: int
    agent_state_dim: int  # each agent's own slice of the state (its observation if nothing better)
    episode_limit: int  # steps after which an episode is truncated (or ends, for fixed-length games)
    discrete: bool
    n_actions: int = 0  # discrete: actions per agent
    action_dim: int = 0  # continuous: action dims per agent
    action_low: float = 0.0  # continuous: lower bound of every action dim
    action_high: float = 0.0  # continuous: upper bound of every action dim
    has_win: bool = False  # whether episodes report win/success
    optimal_return: Optional[float] = None  # best achievable episode return, where known


@dataclass
class Episodes:
    """Statistics of the episodes that ended on this step (rows where `done` is true)."""

    done: torch.Tensor  # [E] bool
    ret: torch.Tensor  # [E] team return of the finished episode
    length: torch.Tensor  # [E] long
    win: Optional[torch.Tensor]  # [E] bool, or None where the env defines no win


@dataclass
class Step:
    obs: torch.Tensor  # [E,n,obs_dim]   (after automatic reset where an episode ended)
    state: torch.Tensor  # [E,state_dim]
    agent_state: torch.Tensor  # [E,n,agent_state_dim]
    avail_actions: torch.Tensor  # [E,n,A] bool (all true for continuous actions, A = 1)
    active: torch.Tensor  # [E,n] bool: the agent is alive; dead agents' steps leave the policy loss
    reward: torch.Tensor  # [E] team reward
    agent_reward: torch.Tensor  # [E,n] individual rewards, summing to `reward`
    terminated: torch.Tensor  # [E] bool
    truncated: torch.Tensor  # [E] bool
    final_obs: torch.Tensor  # [E,n,obs_dim]   last observation of the step, before any reset
    final_state: torch.Tensor  # [E,state_dim] (bootstrap truncated episodes from here)
    final_agent_state: torch.Tensor  # [E,n,agent_state_dim] (for per-agent critics' bootstraps)
    episodes: Episodes


class MultiAgentEnv:
    spec: EnvSpec

    def __init__(self, spec: EnvSpec, num_envs: int, device: torch.device):
        self.spec = spec
        self.num_envs = num_envs
        self.device = torch.device(device)
        E = num_envs
        self._t = torch.zeros(E, dtype=torch.long, device=self.device)
        self._ep_return = torch.zeros(E, device=self.device)
        self._all_active = torch.ones(E, spec.n_agents, dtype=torch.bool, device=self.device)

    # -- implemented by each family ------------------------------------------------------
    def _reset_envs(self, mask: torch.Tensor) -> None:
        raise NotImplementedError

    def _observe(self):
        raise NotImplementedError

    def _transition(self, actions: torch.Tensor):
        raise NotImplementedError

    def _active(self) -> torch.Tensor:
        return self._all_active

    # reward_of(state [..., state_dim], actions [..., n] or [..., n, action_dim]) -> team reward [...]:
    # defined by the families whose next state does not depend on the actions (the matrix and
    # differential games). There Q(s, a) - Q(s, a') = r(s, a) - r(s, a'), so the exact coalition
    # advantages that credit-assignment diagnostics compare against follow from it alone.
    reward_of = None

    # influence_graph [n, n] bool: entry [i, j] is true when agent j's state enters agent i's reward
    # or transition (the diagonal is true), i.e. s_j influences V_i, in ILVF's W_hat convention.
    # Defined by the reward-sum families; the truth that ILVF's learned influence is measured
    # against, and the W_hat of `--influence oracle`.
    influence_graph = None

    # render() -> an RGB frame [H, W, 3] uint8 of env 0, for videos of evaluation episodes.
    # Defined (with can_render = True) by the families that draw: VMAS, MaMuJoCo, SMAX.
    can_render = False

    def render(self):
        raise EnvError(f"{self.spec.env_id}: this family cannot render videos (vmas:, mamujoco: and smax: can)")

    def _split_shared(self, reward: torch.Tensor) -> torch.Tensor:
        """A shared team reward [E] as equal individual rewards [E,n] that sum to it."""
        n = self.spec.n_agents
        return (reward / n).unsqueeze(-1).expand(-1, n)

    # -- the public interface ------------------------------------------------------------
    def reset(self) -> Step:
        E, n = self.num_envs, self.spec.n_agents
        self._reset_envs(torch.ones(E, dtype=torch.bool, device=self.device))
        self._t.zero_()
        self._ep_return.zero_()
        obs, state, agent_state, avail = self._observe()
        false = torch.zeros(E, dtype=torch.bool, device=self.device)
        zeros = torch.zeros(E, device=self.device)
        no_win = false if self.spec.has_win else None
        return Step(obs, state, agent_state, avail, self._active(), zeros, torch.zeros(E, n, device=self.device),
                    false, false, obs, state, agent_state, Episodes(false, zeros, self._t.clone(), no_win))

    def step(self, actions: torch.Tensor) -> Step:
        """actions: [E,n] long (discrete) or [E,n,action_dim] float (clipped to the bounds)."""
        spec = self.spec
        if spec.discrete:
            actions = actions.long()
        else:
            actions = actions.clamp(spec.action_low, spec.action_high)
        agent_reward, terminated, win = self._transition(actions)
        reward = agent_reward.sum(-1)
        self._t += 1
        self._ep_return += reward
        truncated = (self._t >= spec.episode_limit) & ~terminated
        done = terminated | truncated
        episodes = Episodes(
            done=done,
            ret=self._ep_return.clone(),
            length=self._t.clone(),
            win=(win & done) if win is not None else None,
        )
        obs, state, agent_state, avail = self._observe()
        active = self._active()
        final_obs, final_state, final_agent_state = obs, state, agent_state
        if bool(done.any()):
            self._reset_envs(done)
            self._t.masked_fill_(done, 0)
            self._ep_return.masked_fill_(done, 0.0)
            new = self._observe()
            keep = done.view(-1, 1, 1)
            obs = torch.where(keep, new[0], obs)
            state = torch.where(done.view(-1, 1), new[1], state)
            agent_state = torch.where(keep, new[2], agent_state)
            avail = torch.where(keep, new[3], avail)
            active = torch.where(done.view(-1, 1), self._active(), active)
        return Step(obs, state, agent_state, avail, active, reward, agent_reward, terminated, truncated,
                    final_obs, final_state, final_agent_state, episodes)

    def close(self) -> None:
        pass
