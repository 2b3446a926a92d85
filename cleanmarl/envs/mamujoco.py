"""Multi-Agent MuJoCo (MaMuJoCo-v5 through gymnasium-robotics' `mamujoco_v1`).

Ids: `mamujoco:<Robot>-<conf>[,agent_obsk=K][,max_steps=T]`, e.g. `mamujoco:HalfCheetah-6x1`,
`mamujoco:Ant-4x2`, `mamujoco:Walker2d-2x3`, `mamujoco:Hopper-3x1`. `agent_obsk` is how many hops
of the body graph each agent observes (the package's default, 1); `max_steps` shortens the
episode below the robot's own time limit (1000 steps).

Adapter choices:
- obs: each agent's local observation, zero-padded to the largest agent's size (sizes differ,
  e.g. Hopper-3x1 observes 8, 9, 8);
- state: the env's global `state()`; agent_state: the agent's padded observation;
- rewards: one shared reward; the team reward is that reward, each agent's is reward / n;
- terminated: the robot fell (MuJoCo's termination); the 1000-step time limit is a truncation,
  bootstrapped by the scripts, never a termination.
MuJoCo simulates one env per instance, so the E parallel envs are E instances stepped in turn.
Videos render env 0 offscreen (MUJOCO_GL=egl unless the user chose a backend). Two messages the
packages print on every run are dropped (gymnasium-robotics' notice about the Adroit hand envs
and MuJoCo's deprecation of `settotalmass` in the robots' XML); anything else they print passes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings

import numpy as np
import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

INSTALL = "pip install -r requirements-mujoco.txt"
_PATTERN = re.compile(r"^([A-Za-z0-9]+)-(\w+)$")
_NOISE = ("AdroitHandRelocateDense-v1", "compiler attribute 'settotalmass' is deprecated")


@contextlib.contextmanager
def _without_noise():
    """Hold back what the packages print (Python's sys.stderr and MuJoCo's C-level fd 2) and pass
    on every line but the two known notices above."""
    sys.stderr.flush()
    saved, captured = os.dup(2), tempfile.TemporaryFile(mode="w+")
    text = io.StringIO()
    os.dup2(captured.fileno(), 2)
    try:
        with contextlib.redirect_stderr(text):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        lines = (captured.read() + text.getvalue()).splitlines()
        captured.close()
        kept = [line for line in lines if line.strip() and not any(noise in line for noise in _NOISE)]
        if kept:
            print("\n".join(kept), file=sys.stderr)


class MaMuJoCo(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options: dict[str, str]):
        os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering for videos, no display needed
        try:
            with warnings.catch_warnings(), _without_noise():
                warnings.simplefilter("ignore")
                from gymnasium_robotics import mamujoco_v1
        except ImportError:
            raise EnvError(f"{env_id} needs gymnasium-robotics and mujoco, which are not installed: {INSTALL}") from None
        match = _PATTERN.match(scenario)
        if match is None:
            raise EnvError(f"bad MaMuJoCo scenario '{scenario}': write <Robot>-<conf>, e.g. HalfCheetah-6x1, Ant-4x2")
        robot, conf = match.groups()
        unknown = set(options) - {"agent_obsk", "max_steps"}
        if unknown:
            raise EnvError(f"{env_id}: unknown options {sorted(unknown)}; valid: agent_obsk, max_steps")
        try:
            obsk = int(options.get("agent_obsk", 1))
        except ValueError:
            raise EnvError(f"{env_id}: agent_obsk must be an integer >= 0, got '{options['agent_obsk']}'") from None
        if obsk < 0:
            raise EnvError(f"{env_id}: agent_obsk must be an integer >= 0, got {obsk}")
        try:
            with _without_noise():
                self.envs = [mamujoco_v1.parallel_env(robot, conf, agent_obsk=obsk, render_mode="rgb_array")
                             for _ in range(num_envs)]
        except Exception as e:  # the package raises assorted errors for unknown robots/partitions
            raise EnvError(f"{env_id}: MaMuJoCo cannot build {robot} {conf} ({type(e).__name__}: {e})") from None
        first = self.envs[0]
        self.agents = list(first.possible_agents)
        n = len(self.agents)
        obs_dims = [first.observation_space(a).shape[0] for a in self.agents]
        spaces = [first.action_space(a) for a in self.agents]
        if len({s.shape[0] for s in spaces}) != 1 or len({(float(s.low.min()), float(s.high.max())) for s in spaces}) != 1:
            raise EnvError(f"{env_id}: agents with different action sizes or bounds are not supported")
        limit = first.unwrapped.single_agent_env.spec.max_episode_steps or 1000
        try:
            max_steps = int(options.get("max_steps", limit))
        except ValueError:
            max_steps = 0
        if not 1 <= max_steps <= limit:
            raise EnvError(f"{env_id}: max_steps must be an integer in [1, {limit}], got '{options['max_steps']}'")
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=max(obs_dims), state_dim=first.state().shape[0],
                       agent_state_dim=max(obs_dims), episode_limit=max_steps, discrete=False,
                       action_dim=spaces[0].shape[0], action_low=float(spaces[0].low.min()),
                       action_high=float(spaces[0].high.max()))
        super().__init__(spec, num_envs, device)
        self._seed = seed
        self._seeded = False
        self._obs = np.zeros((num_envs, n, spec.obs_dim), dtype=np.float32)
        self._state = np.zeros((num_envs, spec.state_dim), dtype=np.float32)
        self._avail = torch.ones(num_envs, n, 1, dtype=torch.bool, device=self.device)

    can_render = True

    def render(self):
        try:
            return self.envs[0].render()
        except Exception as e:  # no OpenGL backend for MuJoCo's offscreen renderer
            raise EnvError(f"{self.spec.env_id}: MuJoCo cannot render ({type(e).__name__}: {e}); "
                           "set MUJOCO_GL=egl or MUJOCO_GL=osmesa (apt install libosmesa6)") from None

    def _record(self, i: int, obs: dict) -> None:
        for j, agent in enumerate(self.agents):
            o = obs[agent]
            self._obs[i, j, : o.shape[0]] = o
        self._state[i] = self.envs[i].state()

    def _reset_envs(self, mask):
        for i in mask.nonzero().flatten().tolist():  # one simulator instance per env
            # the first reset of env i seeds it with seed + i; later resets continue its RNG
            obs, _ = self.envs[i].reset(seed=None if self._seeded else self._seed + i)
            self._record(i, obs)
        self._seeded = True

    def _observe(self):
        obs = torch.as_tensor(self._obs, device=self.device).clone()
        return obs, torch.as_tensor(self._state, device=self.device).clone(), obs, self._avail

    def _transition(self, actions):
        acts = actions.detach().cpu().numpy()
        E = acts.shape[0]
        reward = np.zeros(E, dtype=np.float32)
        terminated = np.zeros(E, dtype=bool)
        for i, env in enumerate(self.envs):
            obs, rew, term, trunc, _ = env.step({a: acts[i, j] for j, a in enumerate(self.agents)})
            reward[i] = rew[self.agents[0]]  # shared reward, repeated per agent
            terminated[i] = any(term.values())
            self._record(i, obs)
        reward = torch.as_tensor(reward, device=self.device)
        return self._split_shared(reward), torch.as_tensor(terminated, device=self.device), None

    def close(self):
        for env in self.envs:
            env.close()
