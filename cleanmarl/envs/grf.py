"""Google Research Football: `grf:<scenario>[,n_agents=N]` through gfootball.

Any scenario gfootball ships, by name: academy_3_vs_1_with_keeper, academy_counterattack_easy,
academy_counterattack_hard, academy_pass_and_shoot_with_keeper, 11_vs_11_stochastic, ...
gfootball builds a C++ engine from source: install it with `bash cleanmarl/envs/install_gfootball.sh`
(Debian build dependencies, then requirements-grf.txt; ~10-12 min on 2 cores).

Adapter choices:
- agents: one controlled left-team player per agent (`number_of_left_players_agent_controls`);
  the default count is the one the MARL literature uses for the academy scenarios (3 for
  3_vs_1_with_keeper, 4 for the counterattacks, 2 for the pass-and-shoot ones, else 1), and
  `n_agents=N` sets it;
- obs: each player's `simple115v2` vector (positions and directions of all 22 players and the
  ball, ball ownership, the active player, the game mode); state: player 0's `simple115v2`,
  which already holds the whole pitch (the agents' vectors differ only in the active-player
  one-hot); agent_state: the player's own vector;
- actions: gfootball's 19 default actions, all always available; every player is always active;
- rewards: the shared `scoring` reward (+1 goal for, -1 against, `info["score_reward"]`);
  team = that reward, agent i = reward / n; win: the episode's goals for exceed those against;
- terminated: gfootball ended the episode by its rules (a goal, the ball out of play, a change
  of possession in the academy); its game duration (401 steps in the academy, `steps_left` at reset) is the episode
  limit, a truncation;
- seeding: every reset draws the engine's `game_engine_random_seed` from a generator seeded with
  `seed`, so runs repeat exactly and episodes differ.
Each parallel env is one gfootball engine, stepped in turn.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

INSTALL = "bash cleanmarl/envs/install_gfootball.sh"
GYM_VERSION = "0.25."  # gfootball's reset/step follow gym 0.25's API; gym 0.26 breaks them
N_ACTIONS = 19  # gfootball's default action set
DEFAULT_AGENTS = {
    "academy_3_vs_1_with_keeper": 3,
    "academy_counterattack_easy": 4,
    "academy_counterattack_hard": 4,
    "academy_pass_and_shoot_with_keeper": 2,
    "academy_run_pass_and_shoot_with_keeper": 2,
}


def game_factory(env_id: str, scenario: str, n_agents: int) -> Callable[[], object]:
    """() -> a gfootball env for `scenario` with `n_agents` controlled players, after checking the
    package, its gym version and the scenario name."""
    try:
        import gym
        import gfootball.env as football_env
        from gfootball.env import scenario_builder
    except ImportError:
        raise EnvError(f"{env_id} needs Google Research Football (gfootball), which is not installed: "
                       f"{INSTALL} (builds its C++ engine, ~10-12 min; see docs/envs/grf.md)") from None
    if not gym.__version__.startswith(GYM_VERSION):
        raise EnvError(f"{env_id}: gfootball needs gym 0.25 (its reset/step API), found gym {gym.__version__}: "
                       f"pip install gym==0.25.2")
    scenarios = sorted(scenario_builder.all_scenarios())
    if scenario not in scenarios:
        raise EnvError(f"unknown GRF scenario '{scenario}'; valid: {', '.join(scenarios)}")
    return lambda: football_env.create_environment(
        env_name=scenario, representation="simple115v2", rewards="scoring", render=False,
        number_of_left_players_agent_controls=n_agents)


class Football(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options: dict[str, str],
                 factory: Optional[Callable[[], object]] = None):
        unknown = set(options) - {"n_agents"}
        if unknown:
            raise EnvError(f"{env_id}: unknown options {sorted(unknown)}; valid: n_agents")
        n = options.get("n_agents", str(DEFAULT_AGENTS.get(scenario, 1)))
        if not n.isdigit() or int(n) < 1:
            raise EnvError(f"{env_id}: n_agents must be a positive integer, got {n}")
        n = int(n)
        factory = factory or game_factory(env_id, scenario, n)
        try:
            self.envs = [factory() for _ in range(num_envs)]
        except Exception as e:  # e.g. more agents than the scenario has left-team players
            raise EnvError(f"{env_id}: gfootball cannot build it with n_agents={n} ({type(e).__name__}: {e})") from None
        self._rng = np.random.default_rng(seed)
        first = self._reset_one(0)
        # the academy's game duration: what is left of it at the start of an episode
        limit = int(self.envs[0].unwrapped.observation()[0]["steps_left"])
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=first.shape[-1], state_dim=first.shape[-1],
                       agent_state_dim=first.shape[-1], episode_limit=limit, discrete=True, n_actions=N_ACTIONS,
                       has_win=True)
        super().__init__(spec, num_envs, device)
        self._obs = np.zeros((num_envs, n, spec.obs_dim), dtype=np.float32)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._goals = np.zeros(num_envs, dtype=np.float32)  # goals for minus against, this episode
        self._avail = torch.ones(num_envs, n, N_ACTIONS, dtype=torch.bool, device=self.device)

    def _reset_one(self, i: int) -> np.ndarray:
        env = self.envs[i]
        env.unwrapped._config["game_engine_random_seed"] = int(self._rng.integers(2**31))  # read at reset
        return np.asarray(env.reset(), dtype=np.float32).reshape(-1, 115)  # one player: (115,)

    def _reset_envs(self, mask):
        for i in mask.nonzero().flatten().tolist():  # one engine per env
            self._obs[i] = self._reset_one(i)
            self._steps[i] = 0
            self._goals[i] = 0.0

    def _observe(self):
        obs = torch.as_tensor(self._obs, device=self.device).clone()
        return obs, obs[:, 0], obs, self._avail

    def _transition(self, actions):
        acts = actions.cpu().numpy()
        E = acts.shape[0]
        reward = np.zeros(E, dtype=np.float32)
        terminated = np.zeros(E, dtype=bool)
        for i, env in enumerate(self.envs):
            obs, _, done, info = env.step(acts[i].tolist())
            self._obs[i] = np.asarray(obs, dtype=np.float32).reshape(-1, 115)
            reward[i] = info["score_reward"]
            self._steps[i] += 1
            self._goals[i] += reward[i]
            terminated[i] = done and self._steps[i] < self.spec.episode_limit  # the duration is a truncation
        win = torch.as_tensor(self._goals > 0, device=self.device)
        reward = torch.as_tensor(reward, device=self.device)
        return self._split_shared(reward), torch.as_tensor(terminated, device=self.device), win

    def close(self):
        for env in self.envs:
            env.close()
