"""The shared environment layer: `make_env("family:scenario", num_envs, seed, device)`.

Every family returns a `MultiAgentEnv` whose tensors live on `device` (see `base.py` for the
interface). Ids may carry scenario options after commas: `vmas:navigation,n_agents=5`.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch

from .base import EnvError, Episodes, EnvSpec, MultiAgentEnv, Step
from .diff import DifferentialGame
from .matrix import MatrixGame

__all__ = ["make_env", "EnvError", "EnvSpec", "Episodes", "MultiAgentEnv", "Step", "FAMILIES"]


def _matrix(env_id, scenario, num_envs, seed, device, continuous, kwargs):
    return MatrixGame(env_id, scenario, num_envs, seed, device, kwargs)


def _diff(env_id, scenario, num_envs, seed, device, continuous, kwargs):
    return DifferentialGame(env_id, scenario, num_envs, seed, device)


def _vmas(env_id, scenario, num_envs, seed, device, continuous, kwargs):
    from .vmas_env import VmasEnv

    return VmasEnv(env_id, scenario, num_envs, seed, device, bool(continuous), kwargs)


def _smac(env_id, scenario, num_envs, seed, device, continuous, kwargs):
    from .smac_env import StarCraftEnv

    return StarCraftEnv(env_id, env_id.partition(":")[0], scenario, num_envs, seed, device, kwargs)


def _lazy(module, name):
    """A constructor `name(env_id, scenario, num_envs, seed, device, options)` from `module`,
    imported on first use: families with heavy optional packages cost nothing until asked for."""

    def make(env_id, scenario, num_envs, seed, device, continuous, kwargs):
        family = getattr(importlib.import_module(f".{module}", __package__), name)
        return family(env_id, scenario, num_envs, seed, device, kwargs)

    return make


# family -> (constructor, supported action types, example ids, whether `key=value` options apply)
FAMILIES: dict[str, tuple[Callable, tuple[str, ...], str, bool]] = {
    "matrix": (_matrix, ("discrete",), "matrix:team, matrix:peaks10-2x10, matrix:climbing, matrix:penalty,k=-50", True),
    "diff": (_diff, ("continuous",), "diff:2agents, diff:5agents", False),
    "vmas": (_vmas, ("discrete", "continuous"), "vmas:navigation, vmas:give_way,n_agents=2", True),
    "smac": (_smac, ("discrete",), "smac:8m, smac:3s5z (needs StarCraft II)", False),
    "smacv2": (_smac, ("discrete",), "smacv2:protoss_5_vs_5, smacv2:zerg_10_vs_11 (needs StarCraft II)", False),
    "mamujoco": (_lazy("mamujoco", "MaMuJoCo"), ("continuous",), "mamujoco:HalfCheetah-6x1, mamujoco:Ant-4x2,agent_obsk=0", True),
    "smax": (_lazy("smax", "Smax"), ("discrete",), "smax:3m, smax:8m, smax:2s3z, smax:3s_vs_5z,max_steps=50", True),
    "grf": (_lazy("grf", "Football"), ("discrete",), "grf:academy_3_vs_1_with_keeper, grf:academy_counterattack_easy (needs requirements-grf.txt)", True),
    "coupled": (_lazy("coupled", "CoupledRing"), ("discrete",), "coupled:ring, coupled:ring-6", False),
    "mpe": (_lazy("mpe_encircle", "Encircle"), ("discrete",), "mpe:encircle-8, mpe:encircle-20,max_steps=25", True),
    "cacc": (_lazy("cacc", "CACC"), ("discrete",), "cacc:catchup, cacc:slowdown,eval=1", True),
    "pcp": (_lazy("pcp", "PredatorCapturePrey"), ("discrete",), "pcp:, pcp:default,dim=10,max_steps=40", True),
    "atsc": (_lazy("atsc", "TrafficSignals"), ("discrete",), "atsc:grid4x4, atsc:large-grid,seconds=1800 (needs requirements-atsc.txt)", True),
}
SCRIPT_FOR = {"discrete": "mappo.py", "continuous": "mappo_continuous.py"}


def make_env(env_id: str, num_envs: int = 1, seed: int = 0, device="cpu",
             action_type: Optional[str] = None) -> MultiAgentEnv:
    """Build a vectorized multi-agent env from an id `family:scenario[,key=value,...]`.

    action_type: "discrete" or "continuous" (what the calling script can drive); None takes the
    family's first kind. Raises EnvError with a one-line message on any bad input.
    """
    family, sep, rest = env_id.partition(":")
    if not sep or family not in FAMILIES:
        valid = "; ".join(f"{name}: {spec[2]}" for name, spec in FAMILIES.items())
        raise EnvError(f"unknown env id '{env_id}': use family:scenario with a family of {valid}")
    make, kinds, examples, takes_options = FAMILIES[family]
    action_type = action_type or kinds[0]
    if action_type not in kinds:
        raise EnvError(f"{env_id} has {'/'.join(kinds)} actions only: run it with a "
                       f"{kinds[0]}-action script such as cleanmarl/{SCRIPT_FOR[kinds[0]]}")
    scenario, *options = rest.split(",")
    kwargs = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or not key:
            raise EnvError(f"bad option '{option}' in '{env_id}': write options as key=value")
        kwargs[key] = value
    if kwargs and not takes_options:
        raise EnvError(f"'{env_id}': the {family} family takes no key=value options (e.g. {examples})")
    if num_envs < 1:
        raise EnvError(f"num_envs must be at least 1, got {num_envs}")
    return make(env_id, scenario, num_envs, seed, torch.device(device), action_type == "continuous", kwargs)
