"""The grf: family against a test double of gfootball (tests/fake_gfootball.py): conformance,
goals, losses of possession and the game duration, seeding, bad input and the missing-package
line, and MAPPO and CORA end to end; then, where gfootball is installed, the real engine."""

import json
import runpy
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from cleanmarl.envs import EnvError, grf, make_env
from cleanmarl.envs.grf import Football
from tests import fake_gfootball, test_scripts
from tests.fake_gfootball import BALL_X, LEFT, LONG_PASS, RIGHT, SHOT, SLIDE, FakeFootballEnv
from tests.test_benchmark_families import CORA, check_conformance, sample_available

E = 3

try:
    import gfootball.env  # noqa: F401

    HAS_GFOOTBALL = True
except ImportError:
    HAS_GFOOTBALL = False
needs_gfootball = pytest.mark.skipif(not HAS_GFOOTBALL, reason=f"gfootball not installed: {grf.INSTALL}")


def fake_env(n=3, num_envs=E, seed=0, duration=10):
    return Football("grf:academy_fake", "academy_fake", num_envs, seed, "cpu", {"n_agents": str(n)},
                    factory=lambda: FakeFootballEnv(number_of_left_players_agent_controls=n, duration=duration))


def constant(action):
    return lambda avail, gen: torch.full(avail.shape[:2], action, dtype=torch.long)


def test_spec_shapes_and_views():
    env = fake_env()
    spec = env.spec
    assert (spec.n_agents, spec.n_actions, spec.obs_dim, spec.state_dim, spec.episode_limit) == (3, 19, 115, 115, 10)
    assert spec.discrete and spec.has_win
    s = env.reset()
    assert s.avail_actions.all() and s.active.all()
    for i in range(3):  # each agent sees its own player as the active one
        assert (s.obs[:, i, fake_gfootball.ACTIVE + 1 + i] == 1).all()
    assert torch.equal(s.state, s.obs[:, 0])  # the state is player 0's simple115v2


@pytest.mark.parametrize("n", [1, 3])
def test_conformance(n):
    check_conformance(fake_env(n=n), 40)


def test_goal_is_a_win_and_terminates():
    env = fake_env()
    env.reset()
    for t in range(10):  # walk right (3 players: +0.3 a step), then shoot from x >= 0.6
        x = env._obs[:, 0, BALL_X]
        s = env.step(torch.full((E, 3), SHOT if (x >= 0.6).all() else RIGHT))
        if s.episodes.done.any():
            break
    assert s.terminated.all() and not s.truncated.any() and s.episodes.win.all()
    torch.testing.assert_close(s.reward, torch.ones(E))
    torch.testing.assert_close(s.agent_reward, torch.full((E, 3), 1 / 3))
    torch.testing.assert_close(s.episodes.ret, torch.ones(E))


def test_conceded_goal_and_lost_possession_are_losses():
    env = fake_env()
    env.reset()  # every start is at x < 0: a long pass there concedes
    s = env.step(torch.full((E, 3), LONG_PASS))
    assert s.terminated.all() and not s.episodes.win.any()
    torch.testing.assert_close(s.episodes.ret, -torch.ones(E))
    s = env.step(torch.full((E, 3), SLIDE))
    assert s.terminated.all() and not s.episodes.win.any() and (s.episodes.ret == 0).all()


def test_game_duration_is_a_truncation():
    env = fake_env(duration=6)
    env.reset()
    steps = check_conformance(env, 13, policy=constant(LEFT))
    ends = [t for t, s in enumerate(steps[1:], 1) if s.episodes.done.any()]
    assert ends == [6, 12]
    assert all(steps[t].truncated.all() and not steps[t].terminated.any() for t in ends)
    # the final observation is the pre-reset one (the ball walked left 6 times), then it restarts
    s = steps[6]
    torch.testing.assert_close(s.final_obs[:, 0, BALL_X] - s.final_obs[:, 0, 0], torch.full((E,), -1.8))
    torch.testing.assert_close(s.obs[:, 0, BALL_X], s.obs[:, 0, 0])


def test_seeding_repeats_runs_and_varies_episodes():
    def run(seed):
        env = fake_env(seed=seed)
        check_conformance(env, 30, policy=constant(SLIDE))  # every step ends an episode
        return [e.seeds for e in env.envs]

    a, b, c = run(4), run(4), run(5)
    assert a == b and a != c
    assert all(len(set(seeds)) == len(seeds) for seeds in a)  # a fresh engine seed each episode


def test_one_player_observations_are_reshaped():
    env = fake_env(n=1)
    env.reset()
    s = env.step(torch.full((E, 1), RIGHT))
    assert s.obs.shape == (E, 1, 115) and s.agent_reward.shape == (E, 1)


# ---- what is wrong, in one line ----------------------------------------------------------------
def test_missing_gfootball_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gfootball", None)
    monkeypatch.setitem(sys.modules, "gfootball.env", None)
    with pytest.raises(EnvError) as info:
        make_env("grf:academy_3_vs_1_with_keeper", 1)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("grf:academy_3_vs_1_with_keeper needs Google Research Football "
                                              "(gfootball), which is not installed: bash cleanmarl/envs/install_gfootball.sh")


def fake_package(monkeypatch, gym_version):
    """Install the double as the `gfootball` package, next to a `gym` of the given version."""
    env_module = types.ModuleType("gfootball.env")
    env_module.create_environment = fake_gfootball.create_environment
    builder = types.ModuleType("gfootball.env.scenario_builder")
    builder.all_scenarios = lambda: ["academy_3_vs_1_with_keeper", "academy_fake", "11_vs_11_stochastic"]
    env_module.scenario_builder = builder
    package = types.ModuleType("gfootball")
    package.env = env_module
    monkeypatch.setitem(sys.modules, "gfootball", package)
    monkeypatch.setitem(sys.modules, "gfootball.env", env_module)
    monkeypatch.setitem(sys.modules, "gfootball.env.scenario_builder", builder)
    monkeypatch.setitem(sys.modules, "gym", types.SimpleNamespace(__version__=gym_version))


@pytest.mark.parametrize("env_id,match", [
    ("grf:academy_4_vs_1", r"unknown GRF scenario 'academy_4_vs_1'; valid: 11_vs_11_stochastic, academy_3_vs_1_with_keeper"),
    ("grf:academy_fake,players=2", r"unknown options \['players'\]; valid: n_agents"),
    ("grf:academy_fake,n_agents=0", "n_agents must be a positive integer, got 0"),
    ("grf:academy_fake,n_agents=5", r"gfootball cannot build it with n_agents=5 \(AssertionError: cannot control 5 of 4"),
])
def test_bad_ids_are_one_line(env_id, match, monkeypatch):
    fake_package(monkeypatch, "0.25.2")
    with pytest.raises(EnvError, match=match) as info:
        make_env(env_id, 1)
    assert "\n" not in str(info.value)


def test_wrong_gym_is_one_line(monkeypatch):
    fake_package(monkeypatch, "0.26.2")
    with pytest.raises(EnvError, match=r"gfootball needs gym 0.25 .*found gym 0.26.2: pip install gym==0.25.2$"):
        make_env("grf:academy_3_vs_1_with_keeper", 1)


def test_default_agents_per_scenario(monkeypatch):
    fake_package(monkeypatch, "0.25.2")
    assert make_env("grf:academy_3_vs_1_with_keeper", 1).spec.n_agents == 3
    assert make_env("grf:academy_fake", 1).spec.n_agents == 1
    assert make_env("grf:academy_fake,n_agents=2", 1).spec.n_agents == 2


# ---- smoke tests of the discrete scripts on the double (they run and log; no learning claim) ----
@pytest.mark.parametrize("script", [test_scripts.MAPPO, CORA])
def test_scripts_smoke_on_the_double(script, monkeypatch, tmp_path):
    fake_package(monkeypatch, "0.25.2")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script.name, "--env-id", "grf:academy_3_vs_1_with_keeper", "--total-timesteps", "480",
                                      "--num-envs", "4", "--num-steps", "40", "--save-model", "--eval-episodes", "3"])
    runpy.run_path(str(script), run_name="__main__")
    run_dir = test_scripts.only_run_dir(tmp_path)
    assert len(test_scripts.scalars(run_dir, "charts/win_rate")) >= 1
    assert len(test_scripts.scalars(run_dir, "charts/episodic_return")) >= 1
    summary = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= summary["eval_win_rate"] <= 1.0 and -1.0 <= summary["eval_return_mean"] <= 1.0


# ---- the real engine, where installed (not in CI: a ~10 min build) ------------------------------
@needs_gfootball
def test_real_academy_3_vs_1():
    env = make_env("grf:academy_3_vs_1_with_keeper", 2, seed=0)
    spec = env.spec
    # the academy lasts 400 steps after the kick-off step: steps_left counts down from 401
    assert (spec.n_agents, spec.n_actions, spec.obs_dim, spec.episode_limit) == (3, 19, 115, 401)
    steps = check_conformance(env, 60)
    assert any(s.episodes.done.any() for s in steps)  # random play loses the ball quickly
    obs = steps[-1].obs
    assert not torch.equal(obs[:, 0], obs[:, 1])  # players differ in their active one-hot
    env.close()


@needs_gfootball
def test_real_matches_gfootball():
    """With the same engine seed and actions, the adapter's observations and rewards equal a
    gfootball env's. In a fresh process: gfootball's engines share process-wide state (an engine
    made earlier in the process changes a later one's trajectory), so the two must be alone."""
    code = "from tests.test_grf import compare_with_gfootball; compare_with_gfootball()"
    r = subprocess.run([sys.executable, "-c", code], cwd=test_scripts.ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def compare_with_gfootball():
    import gfootball.env as football_env

    env = make_env("grf:academy_counterattack_easy", 1, seed=3)
    s = env.reset()
    raw = football_env.create_environment(env_name="academy_counterattack_easy", representation="simple115v2",
                                          rewards="scoring", number_of_left_players_agent_controls=4)
    raw.unwrapped._config["game_engine_random_seed"] = env.envs[0].unwrapped._config["game_engine_random_seed"]
    torch.testing.assert_close(s.obs[0], torch.as_tensor(np.asarray(raw.reset(), dtype=np.float32)))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = sample_available(s.avail_actions, gen)
        s = env.step(a)
        obs, reward, done, info = raw.step(a[0].tolist())
        torch.testing.assert_close(s.final_obs[0], torch.as_tensor(np.asarray(obs, dtype=np.float32)))
        assert s.reward[0].item() == info["score_reward"] and bool(s.episodes.done[0]) == done
        if done:
            break
    env.close()
    raw.close()


@needs_gfootball
def test_real_cora_mappo_smoke(tmp_path):
    r = test_scripts.run(CORA, "--env-id", "grf:academy_3_vs_1_with_keeper", "--total-timesteps", "400",
                         "--num-envs", "2", "--num-steps", "100", "--save-model", "--eval-episodes", "2",
                         cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(test_scripts.scalars(test_scripts.only_run_dir(tmp_path), "charts/win_rate")) >= 1

