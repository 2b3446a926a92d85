"""SMAX: JaxMARL's JAX re-implementation of SMAC-style micromanagement, `smax:<map>[,max_steps=T]`.

Maps: those JaxMARL ships (3m, 8m, 25m, 2s3z, 3s5z, 5m_vs_6m, 10m_vs_11m, 27m_vs_30m,
3s5z_vs_3s6z, 3s_vs_5z, 6h_vs_8z, smacv2_5_units, smacv2_10_units, smacv2_20_units), played
against JaxMARL's built-in heuristic enemy (`HeuristicEnemySMAX`). `pip install -r
requirements-smax.txt`. SMAX is a different simulator from StarCraft II (its own unit stats,
movement, damage and rewards): SMAX results are not SMAC results and must not be compared to them.

Adapter choices:
- obs: each ally's observation; state: SMAX's `world_state`; agent_state: the ally's observation;
- actions: 0-3 move, 4 stop, 4 + j attack enemy j; avail_actions from SMAX (a dead ally may only
  stop, SMAX's no-op), active: the ally is alive (`unit_alive`);
- rewards: one shared reward per step (SMAX gives every ally the same: enemy health removed,
  normalized, plus `won_battle_bonus` = 1 on the final step of a win); team = that reward,
  agent i = reward / n;
- terminated: one side is wiped out; win: every enemy dead and an ally alive, exactly when SMAX
  pays the win bonus; `max_steps` (default 100, SMAX's) is the episode limit, a truncation.
The E envs are one `jax.vmap` of the env, jitted: one compiled step and one compiled masked reset
per (map, max_steps, E), shared by every instance in a process and kept across processes in JAX's
persistent compilation cache (~/.cache/cleanmarl/jax unless JAX_COMPILATION_CACHE_DIR is set). JaxMARL's `step` resets finished envs itself,
which would lose the final observation; this adapter calls `step_env` (no reset) and resets the
finished envs in `_reset_envs`, so `final_obs`/`final_state` are the true last ones.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys

import numpy as np
import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

INSTALL = "pip install -r requirements-smax.txt"
DEFAULT_MAX_STEPS = 100  # SMAX's own default
# JAX's persistent compilation cache, unless the user set one (JAX_COMPILATION_CACHE_DIR)
CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cleanmarl", "jax")


@contextlib.contextmanager
def _quiet_import():
    """jaxmarl prints two lines when imported, after one of its modules has reset sys.stdout to
    sys.__stdout__ (so redirecting sys.stdout alone does not silence them)."""
    out, original = io.StringIO(), (sys.stdout, sys.__stdout__)
    sys.stdout = sys.__stdout__ = out
    try:
        yield
    finally:
        sys.stdout, sys.__stdout__ = original


def _jaxmarl():
    with _quiet_import():
        import jax
        import jaxmarl
        from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO
    return jax, jaxmarl, MAP_NAME_TO_SCENARIO


def _units_of_env0(state) -> dict:
    """Env 0's units of a batched SMAX state, as numpy arrays."""
    return {"positions": np.asarray(state.unit_positions[0]), "alive": np.asarray(state.unit_alive[0]),
            "health": np.asarray(state.unit_health[0]), "teams": np.asarray(state.unit_teams[0]),
            "types": np.asarray(state.unit_types[0])}


def _to_torch(arrays, device) -> tuple[torch.Tensor, ...]:
    """JAX arrays -> torch tensors on `device` (zero-copy on the CPU)."""
    return tuple(torch.from_dlpack(x).to(device) for x in arrays)


@functools.lru_cache(maxsize=None)
def _compiled(scenario: str, max_steps: int):
    """The env and its jitted, vmapped step and masked reset (jit caches one build per E)."""
    jax, jaxmarl, maps = _jaxmarl()
    jnp = jax.numpy
    if not jax.config.jax_compilation_cache_dir:  # compiling a step takes 5-20 s: keep it on disk
        jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
    # JaxMARL checks its time limit before counting the step, so its max_steps = T - 1 ends
    # episodes after T steps, where the base class truncates them
    env = jaxmarl.make("HeuristicEnemySMAX", scenario=maps[scenario], max_steps=max_steps - 1)
    agents, n = env.agents, env.num_allies

    def view(state):
        """(obs [n,obs_dim], world state [S], avail [n,A] bool, alive [n] bool) of one env."""
        obs = env.get_obs(state)
        avail = env.get_avail_actions(state)
        alive = state.state.unit_alive
        return (jnp.stack([obs[a] for a in agents]), env.get_world_state(state),
                jnp.stack([avail[a] for a in agents]).astype(bool), alive[:n])

    def step(key, state, actions):
        key, step_key = jax.random.split(key)
        _, state, rewards, _, _ = env.step_env(step_key, state, {a: actions[i] for i, a in enumerate(agents)})
        alive = state.state.unit_alive
        allies_dead, enemies_dead = ~alive[:n].any(), ~alive[n:].any()
        terminated = allies_dead | enemies_dead  # the time limit is left to the base class
        win = enemies_dead & ~allies_dead  # the condition of SMAX's won_battle_bonus
        return key, state, rewards[agents[0]], terminated, win, view(state)

    def reset(key, state, mask):
        next_key, reset_key = jax.random.split(key)
        _, fresh = env.reset(reset_key)
        state = jax.tree.map(lambda new, old: jnp.where(mask, new, old), fresh, state)
        return jnp.where(mask, next_key, key), state, view(state)  # only a reset env's stream moves on

    # A blank state to reset from, every leaf strongly typed: env.reset() returns weakly typed
    # leaves that step_env makes strong, and a state of either kind would compile the step twice.
    blank = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(env.reset, jax.random.PRNGKey(0))[1])
    obs, world_state, _, _ = jax.eval_shape(view, blank)
    dims = obs.shape[-1], world_state.shape[-1]
    return env, dims, blank, jax.jit(jax.vmap(step)), jax.jit(jax.vmap(reset))


class Smax(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options: dict[str, str]):
        try:
            jax, _, maps = _jaxmarl()
        except ImportError:
            raise EnvError(f"{env_id} needs JaxMARL and JAX, which are not installed: {INSTALL}") from None
        if scenario not in maps:
            raise EnvError(f"unknown SMAX map '{scenario}'; valid: {', '.join(maps)}")
        unknown = set(options) - {"max_steps"}
        if unknown:
            raise EnvError(f"{env_id}: unknown options {sorted(unknown)}; valid: max_steps")
        try:
            max_steps = int(options.get("max_steps", DEFAULT_MAX_STEPS))
        except ValueError:
            max_steps = 0
        if max_steps < 2:
            raise EnvError(f"{env_id}: max_steps must be an integer >= 2, got {options['max_steps']}")
        env, (obs_dim, state_dim), blank, self._step_fn, self._reset_fn = _compiled(scenario, max_steps)
        self._jnp = jax.numpy
        self._keys = jax.random.split(jax.random.PRNGKey(seed), num_envs)  # one random stream per env
        self._states = jax.tree.map(lambda x: self._jnp.stack([x] * num_envs), blank)  # reset() fills them
        agent = env.agents[0]
        spec = EnvSpec(env_id=env_id, n_agents=env.num_allies, obs_dim=obs_dim, state_dim=state_dim, agent_state_dim=obs_dim,
                       episode_limit=max_steps, discrete=True, n_actions=env.action_spaces[agent].n, has_win=True)
        super().__init__(spec, num_envs, device)
        self._env = env
        self._view = None  # (obs, state, avail, active) as torch tensors, set by every reset and step

    can_render = True

    def render(self, size: int = 480):
        """Env 0 from above: allies blue, enemies red, each unit a disc of its type's radius (at
        least 2 px) whose colour fades with its health; dead units are not drawn."""
        env, units = self._env, _units_of_env0(self._states.state)
        scale = size / max(env.map_width, env.map_height)
        frame = np.full((size, size, 3), 235, dtype=np.uint8)
        ys, xs = np.mgrid[0:size, 0:size]
        full_health = np.asarray(env.unit_type_health)[units["types"]]
        for pos, alive, health, team, kind, top in zip(units["positions"], units["alive"], units["health"],
                                                        units["teams"], units["types"], full_health):
            if not alive:
                continue
            cx, cy = pos[0] * scale, size - pos[1] * scale
            radius = max(2.0, float(env.unit_type_radiuses[kind]) * scale)
            disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
            strength = 0.3 + 0.7 * max(0.0, float(health / top))
            colour = np.array((40, 90, 220) if team == 0 else (220, 50, 40), dtype=float)
            frame[disc] = (235 + strength * (colour - 235)).astype(np.uint8)
        return frame

    def _record(self, view) -> None:
        self._view = _to_torch(view, self.device)

    def _reset_envs(self, mask):
        self._keys, self._states, view = self._reset_fn(self._keys, self._states, self._jnp.asarray(mask.cpu().numpy()))
        self._record(view)

    def _observe(self):
        obs, state, avail, _ = self._view
        return obs, state, obs, avail

    def _active(self):
        return self._view[3]

    def _transition(self, actions):
        acts = self._jnp.asarray(actions.cpu().numpy().astype(np.int32))
        self._keys, self._states, reward, terminated, win, view = self._step_fn(self._keys, self._states, acts)
        self._record(view)
        reward, terminated, win = _to_torch((reward, terminated, win), self.device)
        return self._split_shared(reward), terminated, win
