"""A test double of SMAC's documented `StarCraft2Env` API (no game needed).

n allies fight n enemies of 2 hit points each. Actions follow SMAC: 0 no-op (only for the dead),
1 stop, 2-5 move, 6+j attack enemy j (available while it lives). Each attack deals 1 damage (up
to the enemy's remaining hit points), rewarded 1 per damage; killing every enemy earns 10 more
and wins. The last ally dies at step 2 of every
episode, so episodes always contain a dead agent. Like SMAC, stepping with an unavailable action
or after the end raises, and the time limit ends the episode with info["episode_limit"] = True.
"""

import numpy as np


class FakeStarCraft2Env:
    def __init__(self, map_name="fake3m", seed=0, n_agents=3, episode_limit=12, enemy_hp=2):
        self.n_agents = self.n_enemies = n_agents
        self.episode_limit = episode_limit
        self.enemy_hp = enemy_hp
        self.n_actions = 6 + self.n_enemies
        self.rng = np.random.default_rng(seed)
        self.terminated = True
        self.closed = False

    def get_env_info(self):
        return {"state_shape": 2 + self.n_agents + self.n_enemies, "obs_shape": 4 + self.n_enemies,
                "n_actions": self.n_actions, "n_agents": self.n_agents, "episode_limit": self.episode_limit}

    def reset(self):
        self.steps = 0
        self.alive = np.ones(self.n_agents, dtype=bool)
        self.hp = np.full(self.n_enemies, self.enemy_hp, dtype=float)
        self.noise = self.rng.normal(size=self.n_agents)  # makes obs depend on the seed
        self.terminated = False
        return self.get_obs(), self.get_state()

    def get_avail_agent_actions(self, i):
        if not self.alive[i]:
            return [1] + [0] * (self.n_actions - 1)
        return [0, 1, 1, 1, 1, 1] + [int(h > 0) for h in self.hp]

    def get_avail_actions(self):
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_obs(self):
        obs = []
        for i in range(self.n_agents):
            if not self.alive[i]:
                obs.append(np.zeros(4 + self.n_enemies, dtype=np.float32))
            else:
                own = [1.0, self.steps / self.episode_limit, i / self.n_agents, self.noise[i]]
                obs.append(np.array(own + list(self.hp / self.enemy_hp), dtype=np.float32))
        return obs

    def get_state(self):
        return np.array([self.steps / self.episode_limit, 1.0, *self.alive, *(self.hp / self.enemy_hp)], dtype=np.float32)

    def step(self, actions):
        assert not self.terminated, "step() after the episode ended: call reset()"
        for i, a in enumerate(actions):  # availability as at the start of the step
            assert self.get_avail_agent_actions(i)[a] == 1, f"Agent {i} cannot perform action {a}"
        hits = np.bincount([a - 6 for a in actions if a >= 6], minlength=self.n_enemies)
        damage = np.minimum(self.hp, hits)
        self.hp -= damage
        reward = float(damage.sum())
        self.steps += 1
        if self.steps == 2:
            self.alive[-1] = False
        info = {"battle_won": False, "dead_allies": int((~self.alive).sum()), "dead_enemies": int((self.hp == 0).sum())}
        if (self.hp == 0).all():
            reward += 10.0
            info["battle_won"] = True
            self.terminated = True
        elif self.steps >= self.episode_limit:
            info["episode_limit"] = True
            self.terminated = True
        return reward, self.terminated, info

    def close(self):
        self.closed = True
