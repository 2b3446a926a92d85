"""Env layer: conformance of every family, rewards against hand computation, bad input."""

import itertools
import math
import sys

import pytest
import torch

from cleanmarl.envs import EnvError, make_env
from cleanmarl.envs.diff import potential
from cleanmarl.envs.matrix import make_payoffs

from tests.families import installed


def _import_mujoco():
    import gymnasium_robotics  # noqa: F401
    import mujoco  # noqa: F401


HAS_MUJOCO = installed("mujoco", _import_mujoco, "pip install -r requirements-mujoco.txt")
needs_mujoco = pytest.mark.skipif(not HAS_MUJOCO, reason="MaMuJoCo not installed: pip install -r requirements-mujoco.txt")

# (env id, action type); VMAS and MuJoCo episodes are shortened so autoreset happens in the test.
ENVS = [
    ("matrix:team", "discrete"),
    ("matrix:peaks5-2x10", "discrete"),
    ("matrix:climbing", "discrete"),
    ("matrix:penalty,k=-50", "discrete"),
    ("diff:2agents", "continuous"),
    ("diff:5agents", "continuous"),
    ("vmas:navigation,max_steps=7", "discrete"),
    ("vmas:give_way,max_steps=7", "continuous"),
    ("vmas:balance,max_steps=7,n_agents=3", "continuous"),
    ("mpe:encircle-8,max_steps=7", "discrete"),
    ("pcp:default,max_steps=7", "discrete"),
    ("cacc:catchup,max_steps=7", "discrete"),
    ("cacc:slowdown,max_steps=7", "discrete"),
    pytest.param("mamujoco:HalfCheetah-6x1,max_steps=7", "continuous", marks=needs_mujoco),
    pytest.param("mamujoco:HalfCheetah-2x3,max_steps=7,agent_obsk=0", "continuous", marks=needs_mujoco),
]
E = 5


def random_actions(spec, gen):
    if spec.discrete:
        return torch.randint(0, spec.n_actions, (E, spec.n_agents), generator=gen)
    span = spec.action_high - spec.action_low
    return spec.action_low + span * torch.rand(E, spec.n_agents, spec.action_dim, generator=gen)


def rollout(env_id, action_type, seed, steps=None):
    """Reset and random steps (default: two whole episodes and one step more)."""
    env = make_env(env_id, E, seed, "cpu", action_type)
    gen = torch.Generator().manual_seed(123)
    out = [env.reset()]
    for _ in range(steps or 2 * env.spec.episode_limit + 1):
        out.append(env.step(random_actions(env.spec, gen)))
    return env, out


@pytest.mark.parametrize("env_id,action_type", ENVS)
def test_conformance(env_id, action_type):
    env, steps = rollout(env_id, action_type, seed=3)
    spec = env.spec
    n, A = spec.n_agents, spec.n_actions if spec.discrete else 1
    assert spec.discrete == (action_type == "discrete")
    ep_return = torch.zeros(E)
    ep_length = torch.zeros(E, dtype=torch.long)
    first = steps[0]
    for i, s in enumerate(steps):
        assert s.obs.shape == (E, n, spec.obs_dim) and s.obs.dtype == torch.float32
        assert s.state.shape == (E, spec.state_dim) and s.state.dtype == torch.float32
        assert s.agent_state.shape == (E, n, spec.agent_state_dim)
        assert s.avail_actions.shape == (E, n, A) and s.avail_actions.dtype == torch.bool
        assert s.avail_actions.all()  # none of these families masks actions
        assert s.reward.shape == (E,) and s.agent_reward.shape == (E, n)
        assert s.terminated.dtype == torch.bool and s.truncated.dtype == torch.bool
        assert not (s.terminated & s.truncated).any()
        torch.testing.assert_close(s.agent_reward.sum(-1), s.reward)
        assert s.final_obs.shape == s.obs.shape and s.final_state.shape == s.state.shape
        if i == 0:
            continue
        ep_return += s.reward
        ep_length += 1
        done = s.terminated | s.truncated
        torch.testing.assert_close(s.episodes.done, done)
        # statistics of finished episodes: the sum of their rewards and their step count
        torch.testing.assert_close(s.episodes.ret[done], ep_return[done])
        assert (s.episodes.length[done] == ep_length[done]).all()
        assert (ep_length <= spec.episode_limit).all()
        assert (done == (ep_length == spec.episode_limit)).all()  # no early ends in these tests
        if done.any():  # autoreset: a fixed-state game starts again from its first observation
            if env_id.startswith(("matrix", "diff")):
                torch.testing.assert_close(s.obs[done], first.obs[done])
            else:  # the final observation is the pre-reset one and differs from the new one
                assert not torch.equal(s.final_obs[done], s.obs[done])
        ep_return[done] = 0
        ep_length[done] = 0
    assert sum(int(s.episodes.done.sum()) for s in steps) >= 2 * E


@pytest.mark.parametrize("env_id,action_type", ENVS)
def test_same_seed_same_trajectories(env_id, action_type):
    _, a = rollout(env_id, action_type, seed=7, steps=9)
    _, b = rollout(env_id, action_type, seed=7, steps=9)
    for x, y in zip(a, b):
        assert torch.equal(x.obs, y.obs) and torch.equal(x.state, y.state)
        assert torch.equal(x.reward, y.reward) and torch.equal(x.terminated, y.terminated)


@pytest.mark.parametrize("env_id", ["matrix:team", "matrix:peaks10", "diff:2agents"])
def test_seed_picks_the_game(env_id):
    action_type = "continuous" if env_id.startswith("diff") else "discrete"
    _, a = rollout(env_id, action_type, seed=1, steps=3)
    _, b = rollout(env_id, action_type, seed=2, steps=3)
    assert not all(torch.equal(x.reward, y.reward) for x, y in zip(a[1:], b[1:]))


# ---- rewards against hand computation ---------------------------------------------------------
def play(env, joint_actions):
    """Team reward of each joint action in a one-step game, one per parallel env."""
    env.reset()
    return env.step(torch.tensor(joint_actions)).reward


def test_climbing_and_penalty_payoffs():
    climbing = [[11, -30, 0], [-30, 7, 6], [0, 0, 5]]  # Claus & Boutilier (1998)
    joint = list(itertools.product(range(3), range(3)))
    env = make_env("matrix:climbing", len(joint))
    assert play(env, joint).tolist() == [climbing[a][b] for a, b in joint]
    assert env.spec.optimal_return == 11
    for k in (-100.0, -7.5, 0.0):
        env = make_env(f"matrix:penalty,k={k}", len(joint))
        penalty = [[10, 0, k], [0, 2, 0], [k, 0, 10]]
        assert play(env, joint).tolist() == [penalty[a][b] for a, b in joint]
    assert make_env("matrix:penalty", 1).payoffs.min() == -100


def test_team_game_lookup_and_ranges():
    env = make_env("matrix:team-3x4", 4, seed=5)
    tables = make_payoffs("team-3x4", 5, {})  # [T, 4, 4, 4]
    assert tables.shape == (10, 4, 4, 4)
    assert tables.min() >= -10 and tables.max() <= 20 and tables.std() > 5
    gen = torch.Generator().manual_seed(0)
    s = env.reset()
    for t in range(10):
        assert (s.obs.argmax(-1) == t).all() and (s.obs.sum(-1) == 1).all()  # one-hot step index
        a = torch.randint(0, 4, (4, 3), generator=gen)
        s = env.step(a)
        expected = torch.tensor([tables[t, i, j, k].item() for i, j, k in a.tolist()])
        torch.testing.assert_close(s.reward, expected)
        torch.testing.assert_close(s.agent_reward, (expected / 3).unsqueeze(-1).expand(4, 3))
        assert s.terminated.all() == (t == 9)
    assert env.spec.optimal_return == pytest.approx(tables.flatten(1).max(1).values.sum().item())


@pytest.mark.parametrize("K", [5, 10, 15])
def test_multi_peak_structure(K):
    tables = make_payoffs(f"peaks{K}-2x10", 3, {}).flatten(1)  # [T, 100]
    for table in tables:
        peaks = table[table > 0]
        assert len(peaks) == K  # background is in [-10, 0]
        assert (table[table <= 0] >= -10).all()
        assert peaks.max() == 20 and (peaks == 20).sum() == 1  # one global optimum
        local = peaks[peaks != 20]  # the local peaks are drawn from U[8, 16]
        assert ((local >= 8) & (local <= 16)).all()


def test_eq25_by_hand():
    env = make_env("diff:2agents", 3, seed=4, action_type="continuous")
    c, h, s = env.centres.tolist(), env.heights.tolist(), env.spreads.tolist()
    assert all(5 <= v <= 10 for v in h) and all(1 <= v <= 2 for v in s)
    assert all(-4 <= v <= 4 for centre in c for v in centre)

    def by_hand(x1, x2):
        return sum(hk * math.exp(-((x1 - cx) ** 2 + (x2 - cy) ** 2) / sk**2)
                   for (cx, cy), hk, sk in zip(c, h, s))

    points = [[c[0][0], c[0][1]], [0.0, 0.0], [7.0, -9.0]]  # at a centre, origin, out of bounds
    reward = play(env, [[[x1], [x2]] for x1, x2 in points])
    expected = [by_hand(*c[0]), by_hand(0.0, 0.0), by_hand(5.0, -5.0)]  # actions clipped to [-5, 5]
    torch.testing.assert_close(reward, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_eq25_single_field_values():
    centres, heights, spreads = torch.tensor([[1.0, -2.0]]), torch.tensor([8.0]), torch.tensor([1.5])
    x = torch.tensor([[1.0, -2.0], [2.5, -2.0]])
    expected = torch.tensor([8.0, 8.0 * math.exp(-(1.5**2) / 1.5**2)])  # peak, then h/e at one spread
    torch.testing.assert_close(potential(x, centres, heights, spreads), expected)


@pytest.mark.parametrize("scenario", ["2agents", "2agents-3fields"])
def test_diff_optimum_matches_grid_search(scenario):
    env = make_env(f"diff:{scenario}", 1, seed=2, action_type="continuous")
    grid = torch.linspace(-5, 5, 1001)
    x = torch.cartesian_prod(grid, grid)
    best = env.reward(x).max().item()
    assert env.spec.optimal_return >= best - 1e-6  # the ascent finds at least the grid's best
    assert env.spec.optimal_return <= best + 1e-2  # and the grid (step 0.01) comes close to it


def test_vmas_step_matches_raw_vmas():
    import vmas

    raw = vmas.make_env("navigation", num_envs=E, device="cpu", continuous_actions=False, seed=11)
    raw_obs = raw.reset()
    env = make_env("vmas:navigation", E, seed=11)
    s = env.reset()
    torch.testing.assert_close(s.obs, torch.stack(raw_obs, 1))
    torch.testing.assert_close(s.state, torch.cat(raw_obs, -1))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        a = torch.randint(0, env.spec.n_actions, (E, env.spec.n_agents), generator=gen)
        raw_obs, raw_rews, raw_dones, _ = raw.step(list(a.unbind(1)))
        s = env.step(a)
        torch.testing.assert_close(s.obs, torch.stack(raw_obs, 1))
        rews = torch.stack(raw_rews, 1)
        torch.testing.assert_close(s.reward, rews.mean(1))  # team reward: mean of agents' rewards
        torch.testing.assert_close(s.agent_reward, rews / env.spec.n_agents)
        assert torch.equal(s.terminated, raw_dones)


def test_vmas_pads_heterogeneous_observations():
    env = make_env("vmas:simple_adversary", 2, seed=0)  # adversary and good agents observe differently
    s = env.reset()
    dims = [o.shape[-1] for o in env._obs]
    assert len(set(dims)) > 1 and env.spec.obs_dim == max(dims) and env.spec.state_dim == sum(dims)
    for i, d in enumerate(dims):
        assert (s.obs[:, i, d:] == 0).all()


@pytest.mark.parametrize("env_id,action_type,match", [
    ("nope:x", None, "unknown env id 'nope:x'.*matrix.*diff.*vmas"),
    ("navigation", None, "unknown env id"),
    ("matrix:teams", None, "unknown matrix scenario 'teams'; valid: team"),
    ("matrix:team-1x1", None, "need n >= 1, A >= 2"),
    ("matrix:climbing,k=0", None, "takes no options"),
    ("matrix:penalty,k=3", None, "k must be a number <= 0"),
    ("diff:2agent", "continuous", "unknown diff scenario"),
    ("diff:2agents", "discrete", "continuous actions only.*mappo_continuous.py"),
    ("matrix:team", "continuous", "discrete actions only.*mappo.py"),
    ("vmas:navigatoin", None, "unknown VMAS scenario 'navigatoin'; valid: .*navigation"),
    ("vmas:navigation,n_agents", None, "write options as key=value"),
])
def test_bad_ids_fail_with_one_clear_line(env_id, action_type, match):
    with pytest.raises(EnvError, match=match) as info:
        make_env(env_id, 2, 0, "cpu", action_type)
    assert "\n" not in str(info.value)


def test_missing_vmas_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "vmas", None)  # import vmas now raises ImportError
    with pytest.raises(EnvError, match=r"needs the VMAS package, which is not installed: pip install vmas") as info:
        make_env("vmas:navigation", 2)
    assert "\n" not in str(info.value)


@needs_mujoco
def test_mamujoco_step_matches_raw_env():
    from gymnasium_robotics import mamujoco_v1

    raw = mamujoco_v1.parallel_env("Hopper", "3x1")
    raw_obs, _ = raw.reset(seed=4)
    env = make_env("mamujoco:Hopper-3x1", 1, seed=4, action_type="continuous")
    s = env.reset()
    assert env.spec.obs_dim == 9 and env.spec.state_dim == raw.state().shape[0]
    gen = torch.Generator().manual_seed(0)
    for t in range(40):
        for i, agent in enumerate(raw.possible_agents):  # per-agent sizes 8, 9, 8, zero-padded to 9
            o = torch.as_tensor(raw_obs[agent], dtype=torch.float32)
            torch.testing.assert_close(s.obs[0, i, : len(o)], o)
            assert (s.obs[0, i, len(o):] == 0).all()
        torch.testing.assert_close(s.state[0], torch.as_tensor(raw.state(), dtype=torch.float32))
        a = torch.rand(1, 3, 1, generator=gen) * 2 - 1
        raw_obs, rew, term, trunc, _ = raw.step({agent: a[0, i].numpy() for i, agent in enumerate(raw.possible_agents)})
        s = env.step(a)
        assert s.reward.item() == pytest.approx(rew["agent_0"], rel=1e-6)
        assert s.terminated.item() == any(term.values())
        if s.terminated.item():  # the Hopper fell: a termination, reset automatically
            assert not s.truncated.item() and s.episodes.length.item() == t + 1
            break
    else:
        pytest.fail("random actions should make the Hopper fall within 40 steps")


@needs_mujoco
def test_mamujoco_time_limit_is_a_truncation():
    env = make_env("mamujoco:HalfCheetah-6x1", 2, seed=0, action_type="continuous")
    assert env.spec.episode_limit == 1000
    env.reset()
    for _ in range(1000):
        s = env.step(torch.zeros(2, 6, 1))
    assert s.truncated.all() and not s.terminated.any() and (s.episodes.length == 1000).all()


@needs_mujoco
@pytest.mark.parametrize("env_id,match", [
    ("mamujoco:HalfCheetah", "write <Robot>-<conf>"),
    ("mamujoco:Foo-2x3", "MaMuJoCo cannot build Foo 2x3"),
    ("mamujoco:HalfCheetah-6x1,max_steps=5000", r"max_steps must be an integer in \[1, 1000\]"),
    ("mamujoco:HalfCheetah-6x1,bogus=1", "unknown options"),
])
def test_mamujoco_bad_ids(env_id, match):
    with pytest.raises(EnvError, match=match):
        make_env(env_id, 1, 0, "cpu", "continuous")


def test_missing_mujoco_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)
    with pytest.raises(EnvError, match=r"needs gymnasium-robotics and mujoco, which are not installed: pip install -r requirements-mujoco.txt"):
        make_env("mamujoco:HalfCheetah-6x1", 1, action_type="continuous")
