"""VMAS scenarios (`vmas:<scenario>[,key=value,...]`), natively vectorized in torch.

Any scenario VMAS ships (give_way, multi_give_way, navigation, transport, balance, ... and the MPE
ports such as simple_spread) with discrete or continuous actions. `key=value` pairs after the
name go to the scenario (e.g. `vmas:navigation,n_agents=5`), except `max_steps`, the episode
limit (default 100, as in BenchMARL's VMAS tasks).

Adapter choices:
- obs: each agent's VMAS observation, zero-padded to the largest agent's size;
- state: the concatenation of all agents' (unpadded) observations, VMAS having no global state;
- agent_state: the agent's padded observation;
- rewards: VMAS returns one reward per agent (the same value for every agent in shared-reward
  scenarios); the team reward is their mean and agent i's reward is r_i / n, so individual
  rewards sum to the team reward and a shared reward is counted once;
- terminated: VMAS's `done`; truncated: the `max_steps` limit, applied by the base class.
Options are checked before VMAS sees them: `max_steps` and `n_agents` must be integers >= 1, an
option the scenario does not use is an error (VMAS itself only warns), and whatever else the
scenario rejects is reported in one line.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings

import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

DEFAULT_MAX_STEPS = 100
INSTALL = "pip install vmas  (see requirements.txt)"
POSITIVE_INT_OPTIONS = ("max_steps", "n_agents")  # the options every scenario that takes them reads as counts


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def scenario_options(scenario):
    """The options a VMAS scenario reads: the kwargs its make_world pops or gets (from its source)."""
    for package in ("vmas.scenarios", "vmas.scenarios.mpe", "vmas.scenarios.debug"):
        try:
            module = importlib.import_module(f"{package}.{scenario}")
        except ImportError:
            continue
        source = inspect.getsource(module.Scenario.make_world)
        return sorted(set(re.findall(r"kwargs\.(?:pop|get)\(\s*[\"'](\w+)[\"']", source)))
    return []


class VmasEnv(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device,
                 continuous: bool, kwargs: dict[str, str]):
        try:
            import vmas
        except ImportError:
            raise EnvError(f"{env_id} needs the VMAS package, which is not installed: {INSTALL}") from None
        known = sorted(vmas.scenarios + vmas.mpe_scenarios + vmas.debug_scenarios)
        if scenario not in known:
            raise EnvError(f"unknown VMAS scenario '{scenario}'; valid: {', '.join(known)}")
        kwargs = {k: _parse_value(v) for k, v in kwargs.items()}
        for key in POSITIVE_INT_OPTIONS:
            value = kwargs.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EnvError(f"{env_id}: {key} must be an integer >= 1, got '{value}'")
        max_steps = kwargs.pop("max_steps", DEFAULT_MAX_STEPS)
        try:
            with warnings.catch_warnings():  # VMAS warns about options the scenario never reads
                warnings.filterwarnings("error", message="Scenario kwargs")
                self.env = vmas.make_env(scenario, num_envs=num_envs, device=device,
                                         continuous_actions=continuous, seed=seed, max_steps=None,
                                         **kwargs)
        except UserWarning as e:  # "Scenario kwargs: {...} passed but not used by the scenario. ..."
            unused = str(e).split(" passed")[0].removeprefix("Scenario kwargs: ")
            raise EnvError(f"{env_id}: the {scenario} scenario has no options {unused}; its options: "
                           f"{', '.join(scenario_options(scenario)) or 'none'} (and max_steps)") from None
        except Exception as e:  # the scenario's own checks on the options: asserts, type errors
            if not kwargs:
                raise  # no option to blame: a real failure, with its traceback
            raise EnvError(f"{env_id}: VMAS's {scenario} rejects these options ({type(e).__name__}: {e})") from None
        n = self.env.n_agents
        obs_dims = [int(space.shape[0]) for space in self.env.observation_space]
        spaces = list(self.env.action_space)
        if continuous:
            dims = {s.shape[0] for s in spaces}
            lows = {float(v) for s in spaces for v in s.low}
            highs = {float(v) for s in spaces for v in s.high}
            if len(dims) != 1 or len(lows) != 1 or len(highs) != 1:
                raise EnvError(f"{env_id}: agents with different action shapes or bounds are not supported")
            act = dict(action_dim=dims.pop(), action_low=lows.pop(), action_high=highs.pop())
        else:
            sizes = {int(s.n) for s in spaces}
            if len(sizes) != 1:
                raise EnvError(f"{env_id}: agents with different numbers of actions are not supported")
            act = dict(n_actions=sizes.pop())
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=max(obs_dims), state_dim=sum(obs_dims),
                       agent_state_dim=max(obs_dims), episode_limit=max_steps,
                       discrete=not continuous, **act)
        super().__init__(spec, num_envs, device)
        self._obs: list[torch.Tensor] = []  # VMAS's latest per-agent observations [E, d_i]
        self._avail = torch.ones(num_envs, n, spec.n_actions or 1, dtype=torch.bool, device=self.device)

    can_render = True

    def render(self):
        return self.env.render(mode="rgb_array", env_index=0)

    def _reset_envs(self, mask):
        if bool(mask.all()):
            self._obs = self.env.reset()
        else:  # VMAS resets one env index per call; only finished envs pass through here
            for i in mask.nonzero().flatten().tolist():
                self._obs = self.env.reset_at(i)

    def _observe(self):
        dim = self.spec.obs_dim
        obs = torch.stack([torch.nn.functional.pad(o, (0, dim - o.shape[-1])) for o in self._obs], 1)
        return obs, torch.cat(self._obs, -1), obs, self._avail

    def _transition(self, actions):
        self._obs, rews, dones, _ = self.env.step(list(actions.unbind(1)))
        agent_reward = torch.stack(rews, -1) / self.spec.n_agents  # [E,n]
        return agent_reward, dones.bool(), None
