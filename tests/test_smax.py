"""The smax: family (JaxMARL's SMAX): conformance, equality with the raw JaxMARL env step by step,
wins from the final-step bonus, dead agents, one compilation per shape, bad input, and the
discrete MAPPO and CORA scripts end to end."""

import json
import sys

import pytest
import torch

from cleanmarl.envs import EnvError, make_env
from tests import test_scripts
from tests.test_benchmark_families import CORA, check_conformance, sample_available

from cleanmarl.envs import smax
from tests.families import installed

HAS_SMAX = installed("smax", smax._jaxmarl, "pip install -r requirements-smax.txt")
if HAS_SMAX:
    jax, jaxmarl, MAPS = smax._jaxmarl()
pytestmark = pytest.mark.skipif(not HAS_SMAX, reason="SMAX not installed: pip install -r requirements-smax.txt")

E = 4
ID = "smax:3m,max_steps=30"  # one id (and E) for most tests, so they share compiled functions
STOP = 4  # SMAX's no-op: 0-3 move, 4 stop, 4 + j attack enemy j
RIGHT = 1  # towards the enemy's side of the map


def focus_fire(avail, gen):
    """Every ally attacks the lowest-numbered enemy in range, else walks towards the enemy."""
    attack = avail[..., STOP + 1:]
    target = STOP + 1 + attack.float().argmax(-1)
    walk = torch.where(avail[..., RIGHT], RIGHT, STOP)
    return torch.where(attack.any(-1), target, walk)


def test_conformance_with_time_limits_deaths_and_wins():
    env = make_env(ID, E, seed=1)
    spec = env.spec
    assert (spec.n_agents, spec.n_actions, spec.episode_limit, spec.discrete, spec.has_win) == (3, 8, 30, True, True)
    steps = check_conformance(env, 120, policy=focus_fire, noop=STOP)
    done = torch.stack([s.episodes.done for s in steps[1:]])
    truncated = torch.stack([s.truncated for s in steps[1:]])
    wins = torch.stack([s.episodes.win for s in steps[1:]])
    assert (~torch.stack([s.active for s in steps[1:]])).any()  # allies died
    assert wins.any() and (done & ~wins).any()  # focus fire wins some battles, not all
    # a win is exactly an episode whose last reward holds SMAX's win bonus (1.0): the health
    # part of one step's reward stays well below 1 here
    last_reward = torch.stack([s.reward for s in steps[1:]])
    assert torch.equal(wins[done], last_reward[done] >= 1.0)
    assert not truncated[wins].any()


def test_random_play_ends_by_time_limit_and_deaths():
    env = make_env("smax:2s3z,max_steps=10", E, seed=2)
    steps = check_conformance(env, 25, noop=STOP)
    assert any(s.truncated.any() for s in steps) and env.spec.n_agents == 5


def test_matches_raw_jaxmarl_step_by_step():
    """Same keys, same actions: the adapter's obs, state, avail, alive, rewards and dones equal the
    raw env's, reset where JaxMARL's own step would reset, and final_obs is the pre-reset view."""
    env = make_env(ID, 2, seed=5)
    raw = jaxmarl.make("HeuristicEnemySMAX", scenario=MAPS["3m"], max_steps=29)  # ends after 30 steps
    agents = raw.agents
    keys = list(jax.random.split(jax.random.PRNGKey(5), 2))
    states = [None, None]

    def raw_reset(i):
        keys[i], k = jax.random.split(keys[i])
        return raw.reset(k)[1]

    def view(state):
        obs = raw.get_obs(state)
        avail = raw.get_avail_actions(state)
        return (torch.tensor([obs[a].tolist() for a in agents]), torch.tensor(raw.get_world_state(state).tolist()),
                torch.tensor([avail[a].tolist() for a in agents]).bool())

    s = env.reset()
    states = [raw_reset(0), raw_reset(1)]
    gen = torch.Generator().manual_seed(0)
    ends = 0
    for _ in range(70):
        actions = sample_available(s.avail_actions, gen)
        s = env.step(actions)
        for i in range(2):
            keys[i], k = jax.random.split(keys[i])
            _, states[i], rewards, dones, _ = raw.step_env(k, states[i], {a: int(actions[i, j]) for j, a in enumerate(agents)})
            obs, world, avail = view(states[i])
            torch.testing.assert_close(s.final_obs[i], obs)
            torch.testing.assert_close(s.final_state[i], world)
            assert s.reward[i].item() == pytest.approx(float(rewards[agents[0]]))
            assert bool(s.terminated[i] | s.truncated[i]) == bool(dones["__all__"])
            if dones["__all__"]:
                ends += 1
                states[i] = raw_reset(i)
                obs, world, avail = view(states[i])
            torch.testing.assert_close(s.obs[i], obs)
            torch.testing.assert_close(s.state[i], world)
            assert torch.equal(s.avail_actions[i], avail)
            assert s.active[i].tolist() == [bool(x) for x in states[i].state.unit_alive[:3]]
    assert ends >= 2


def test_compiled_once_per_shape():
    smax._compiled.cache_clear()  # fresh jitted functions (their programs come from the disk cache)
    env = make_env(ID, E, seed=3)
    check_conformance(env, 40, noop=STOP)
    _, _, _, step_fn, reset_fn = smax._compiled("3m", 30)
    assert step_fn._cache_size() == 1 and reset_fn._cache_size() == 1  # reset and stepped states alike


def test_same_seed_same_trajectories_and_seeds_differ():
    def run(seed):
        env = make_env(ID, E, seed=seed)
        return [s.obs for s in check_conformance(env, 6, noop=STOP, seed=4)]

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_every_shipped_map_builds():
    for name in MAPS:
        spec = make_env(f"smax:{name}", 1).spec  # no compilation: shapes come from jax.eval_shape
        assert spec.n_agents >= 1 and spec.n_actions == 5 + smax._compiled(name, 100)[0].num_enemies


@pytest.mark.parametrize("env_id,match", [
    ("smax:4m", "unknown SMAX map '4m'; valid: 3m, 2s3z, .*8m"),
    ("smax:3m,difficulty=7", r"unknown options \['difficulty'\]; valid: max_steps"),
    ("smax:3m,max_steps=1", "max_steps must be an integer >= 2, got 1"),
    ("smax:3m,max_steps=x", "max_steps must be an integer >= 2, got x"),
])
def test_bad_ids_are_one_line(env_id, match):
    with pytest.raises(EnvError, match=match) as info:
        make_env(env_id, 1)
    assert "\n" not in str(info.value)


def test_missing_jaxmarl_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "jaxmarl", None)
    with pytest.raises(EnvError, match=r"^smax:8m needs JaxMARL and JAX, which are not installed: "
                                       r"pip install -r requirements-smax.txt$"):
        make_env("smax:8m", 1)


@pytest.mark.parametrize("script", [test_scripts.MAPPO, CORA])
def test_discrete_scripts_smoke_on_smax(script, tmp_path):
    test_scripts.test_script_runs_and_logs(script, ID, tmp_path)
    run_dir = test_scripts.only_run_dir(tmp_path)
    assert len(test_scripts.scalars(run_dir, "charts/win_rate")) >= 1
    assert 0.0 <= json.loads((run_dir / "eval.json").read_text())["eval_win_rate"] <= 1.0
