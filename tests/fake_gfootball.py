"""A test double of gfootball's documented API (no engine needed): `create_environment(...)`
returning an env with gym 0.25's `reset() -> obs` and `step(actions) -> (obs, reward, done, info)`,
`info["score_reward"]`, the raw observation at `env.unwrapped.observation()` (with `steps_left`),
and the engine seed read from `env.unwrapped._config["game_engine_random_seed"]` at each reset.

The game: the left team attacks along x from a start drawn from the engine seed. Each step the
ball moves +0.1 per player choosing "right" (action 5) and -0.1 per player choosing "left" (1).
A shot (12) from x >= 0.6 scores (+1, episode ends, a win); a long pass (9) from x < 0 gives the
ball away and the opponent scores (-1, ends); a sliding tackle (16) concedes possession (0,
ends, as the academy ends on a change of possession); otherwise the game lasts `duration` steps.
Observations are simple115v2-shaped: the ball's x at index 88, the controlled player's one-hot
at 97 + player index, the start offset at index 0. Like gfootball, one controlled player gets
a (115,) observation and a scalar reward, several get (N, 115) and N copies of the reward, and
stepping after the end raises.
"""

import numpy as np

BALL_X, ACTIVE = 88, 97
RIGHT, LEFT, LONG_PASS, SHOT, SLIDE = 5, 1, 9, 12, 16


class FakeConfig(dict):
    """gfootball's Config: item access; the engine seed is drawn when the game does not set one."""


class FakeFootballEnv:
    def __init__(self, env_name="academy_fake", representation="simple115v2", rewards="scoring", render=False,
                 number_of_left_players_agent_controls=1, duration=10, left_players=4):
        assert representation == "simple115v2" and rewards == "scoring" and not render
        if number_of_left_players_agent_controls > left_players:
            raise AssertionError(f"cannot control {number_of_left_players_agent_controls} of {left_players} players")
        self.n = number_of_left_players_agent_controls
        self.duration = duration
        self._config = FakeConfig()
        self.unwrapped = self
        self.done = True
        self.closed = False
        self.seeds = []  # engine seeds used by each episode

    def observation(self):
        """The raw observation: one dict per controlled player."""
        return [{"steps_left": self.duration - self.steps, "ball": [self.x, 0.0, 0.0]} for _ in range(self.n)]

    def _obs(self):
        obs = np.zeros((self.n, 115), dtype=np.float32)
        obs[:, 0] = self.start
        obs[:, BALL_X] = self.x
        obs[np.arange(self.n), ACTIVE + 1 + np.arange(self.n)] = 1.0
        return obs[0] if self.n == 1 else obs

    def reset(self):
        seed = self._config.get("game_engine_random_seed")
        if seed is None:
            seed = int(np.random.randint(2**31))
        self.seeds.append(seed)
        self.start = float(np.random.default_rng(seed).uniform(-0.5, 0.0))
        self.x = self.start
        self.steps = 0
        self.done = False
        return self._obs()

    def step(self, action):
        assert not self.done, "step() called after the episode ended: call reset()"
        actions = [int(a) for a in np.atleast_1d(action)]
        assert len(actions) == self.n and all(0 <= a < 19 for a in actions)
        score = 0
        if any(a == SHOT for a in actions) and self.x >= 0.6:
            score, self.done = 1, True
        elif any(a == LONG_PASS for a in actions) and self.x < 0:
            score, self.done = -1, True
        elif any(a == SLIDE for a in actions):
            self.done = True
        self.x += 0.1 * (sum(a == RIGHT for a in actions) - sum(a == LEFT for a in actions))
        self.steps += 1
        if self.steps >= self.duration:
            self.done = True
        reward = float(score) if self.n == 1 else np.full(self.n, score, dtype=np.float32)
        return self._obs(), reward, self.done, {"score_reward": score}

    def close(self):
        self.closed = True


def create_environment(env_name="", **kwargs):
    return FakeFootballEnv(env_name, **kwargs)
