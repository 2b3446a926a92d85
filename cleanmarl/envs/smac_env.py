"""StarCraft Multi-Agent Challenge: `smac:<map>` (SMAC) and `smacv2:<race>_<N>_vs_<M>` (SMACv2).

Neither package nor the game installs from the package registries (the PyPI package named `smac`
is SMAC3, an unrelated hyperparameter optimizer). See docs/envs/smac.md for the install recipe:
StarCraft II 4.10 in $SC2PATH (default ~/StarCraftII) with the SMAC maps, and the packages
from the oxwhirl/smac or oxwhirl/smacv2 repositories. Before launching, the game and the package
are checked and a missing one ends in one line saying what to install.

Adapter choices:
- obs, state, avail_actions: `get_obs()`, `get_state()`, `get_avail_actions()`;
- active: an agent is dead when only the no-op (action 0) is available, SMAC's convention;
- rewards: one shared reward; team = reward, agent i = reward / n;
- win: `info["battle_won"]`;
- SMAC ends an episode at its `episode_limit` with `terminated=True, info["episode_limit"]=True`:
  that is a time limit, reported as `truncated` (and bootstrapped), not as a termination.
Each parallel env is one game process, stepped in turn.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Optional

import numpy as np
import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

RECIPE = "see docs/envs/smac.md"
SMAX_MAPS = {"3m", "8m", "25m", "2s3z", "3s5z", "5m_vs_6m", "10m_vs_11m", "27m_vs_30m", "3s5z_vs_3s6z", "3s_vs_5z",
             "6h_vs_8z"}  # the SMAC maps JaxMARL's SMAX also has (cleanmarl/envs/smax.py)
SMAC_INSTALL = "pip install git+https://github.com/oxwhirl/smac.git"
SMACV2_INSTALL = "pip install git+https://github.com/oxwhirl/smacv2.git"
_V2_PATTERN = re.compile(r"^(protoss|terran|zerg)_(\d+)_vs_(\d+)$")
# SMACv2's unit distributions (its paper and examples): the third unit type is the rare one
V2_UNITS = {
    "protoss": ["stalker", "zealot", "colossus"],
    "terran": ["marine", "marauder", "medivac"],
    "zerg": ["zergling", "hydralisk", "baneling"],
}


def sc2_path() -> str:
    return os.environ.get("SC2PATH", os.path.expanduser("~/StarCraftII"))


def missing_game() -> Optional[str]:
    path = sc2_path()
    if os.path.isdir(os.path.join(path, "Versions")):
        return None
    return (f"the StarCraft II game (4.10, with the SMAC maps) is not at {path}: "
            f"install it there or set SC2PATH")


def smacv2_config(race: str, n_units: int, n_enemies: int) -> dict:
    """SMACv2 capability config: weighted unit types, surrounded-and-reflect start positions."""
    units = V2_UNITS[race]
    return {
        "n_units": n_units,
        "n_enemies": n_enemies,
        "team_gen": {"dist_type": "weighted_teams", "unit_types": units, "weights": [0.45, 0.45, 0.1],
                     "exception_unit_types": [units[2]], "observe": True},
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "n_enemies": n_enemies,
                            "map_x": 32, "map_y": 32},
    }


def game_factory(env_id: str, family: str, scenario: str) -> Callable[[int], object]:
    """seed -> a StarCraft2Env (SMAC) or capability wrapper (SMACv2), after checking both exist."""
    missing = []
    if family == "smac":
        try:
            from smac.env import StarCraft2Env
        except ImportError:
            try:
                import smac  # noqa: F401

                missing.append(f"the installed 'smac' package is SMAC3 (an optimizer), not StarCraft: "
                               f"pip uninstall smac, then {SMAC_INSTALL}")
            except ImportError:
                missing.append(f"the SMAC package is not installed: {SMAC_INSTALL}")
    else:
        match = _V2_PATTERN.match(scenario)
        if match is None:
            raise EnvError(f"bad SMACv2 scenario '{scenario}': write <race>_<N>_vs_<M> with race protoss, terran "
                           f"or zerg, e.g. smacv2:protoss_5_vs_5")
        try:
            from smacv2.env.starcraft2.wrapper import StarCraftCapabilityEnvWrapper
        except ImportError:
            missing.append(f"the SMACv2 package is not installed: {SMACV2_INSTALL}")
    game = missing_game()
    if game:
        missing.append(game)
    if missing:
        stand_in = (f"; without StarCraft II, JaxMARL's SMAX plays the same map: --env-id smax:{scenario} "
                    "(a different simulator: not SMAC results)") if family == "smac" and scenario in SMAX_MAPS else ""
        raise EnvError(f"{env_id} cannot start: {'; and '.join(missing)} ({RECIPE}){stand_in}")
    if family == "smac":
        return lambda seed: StarCraft2Env(map_name=scenario, seed=seed)
    race, n, m = match.group(1), int(match.group(2)), int(match.group(3))
    config = smacv2_config(race, n, m)
    return lambda seed: StarCraftCapabilityEnvWrapper(
        capability_config=config, map_name=f"10gen_{race}", seed=seed, conic_fov=False, use_unit_ranges=True,
        min_attack_range=2, obs_own_pos=True, fully_observable=False)


class StarCraftEnv(MultiAgentEnv):
    def __init__(self, env_id: str, family: str, scenario: str, num_envs: int, seed: int, device,
                 options: dict[str, str], factory: Optional[Callable[[int], object]] = None):
        if options:
            raise EnvError(f"{env_id}: the {family} family takes no options")
        factory = factory or game_factory(env_id, family, scenario)
        self.envs = [factory(seed + i) for i in range(num_envs)]
        info = self.envs[0].get_env_info()
        n, A = info["n_agents"], info["n_actions"]
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=info["obs_shape"], state_dim=info["state_shape"],
                       agent_state_dim=info["obs_shape"], episode_limit=info["episode_limit"], discrete=True,
                       n_actions=A, has_win=True)
        super().__init__(spec, num_envs, device)
        self._obs = np.zeros((num_envs, n, spec.obs_dim), dtype=np.float32)
        self._state = np.zeros((num_envs, spec.state_dim), dtype=np.float32)
        self._avail = np.zeros((num_envs, n, A), dtype=bool)

    def _record(self, i: int) -> None:
        env = self.envs[i]
        self._obs[i] = np.asarray(env.get_obs(), dtype=np.float32)
        self._state[i] = np.asarray(env.get_state(), dtype=np.float32)
        self._avail[i] = np.asarray(env.get_avail_actions(), dtype=bool)

    def _reset_envs(self, mask):
        for i in mask.nonzero().flatten().tolist():  # one game process per env
            self.envs[i].reset()
            self._record(i)

    def _observe(self):
        obs = torch.as_tensor(self._obs, device=self.device).clone()
        state = torch.as_tensor(self._state, device=self.device).clone()
        return obs, state, obs, torch.as_tensor(self._avail, device=self.device).clone()

    def _active(self):
        only_noop = self._avail[..., 0] & ~self._avail[..., 1:].any(-1)
        return torch.as_tensor(~only_noop, device=self.device)

    def _transition(self, actions):
        acts = actions.cpu().numpy()
        E = acts.shape[0]
        reward = np.zeros(E, dtype=np.float32)
        terminated = np.zeros(E, dtype=bool)
        won = np.zeros(E, dtype=bool)
        for i, env in enumerate(self.envs):
            r, term, info = env.step(acts[i].tolist())
            reward[i] = r
            terminated[i] = term and not info.get("episode_limit", False)  # the limit is a truncation
            won[i] = bool(info.get("battle_won", False))
            self._record(i)
        reward = torch.as_tensor(reward, device=self.device)
        return (self._split_shared(reward), torch.as_tensor(terminated, device=self.device),
                torch.as_tensor(won, device=self.device))

    def close(self):
        for env in self.envs:
            env.close()
