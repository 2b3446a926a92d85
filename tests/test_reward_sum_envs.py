"""The reward-sum families of the ILVF paper (cacc:, mpe:encircle, pcp:): dynamics and rewards
against independent numpy re-computations, who observes whom, determinism, and end-to-end runs."""

import math

import numpy as np
import pytest
import torch

from cleanmarl.envs import EnvError, make_env
from tests.test_scripts import MAPPO, only_run_dir, run, scalars

IDS = ["cacc:catchup", "cacc:slowdown", "cacc:catchup,eval=1"]
E = 6


def random_rollout(env_id, seed, steps, num_envs=E):
    env = make_env(env_id, num_envs, seed)
    gen = torch.Generator().manual_seed(seed + 100)
    out = [env.reset()]
    for _ in range(steps):
        out.append(env.step(torch.randint(0, env.spec.n_actions, (num_envs, env.spec.n_agents), generator=gen)))
    return env, out


# ---- every family --------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_shapes_reward_sum_and_statistics(env_id):
    env, steps = random_rollout(env_id, 0, 120)
    spec, n = env.spec, env.spec.n_agents
    ret, length = torch.zeros(E), torch.zeros(E, dtype=torch.long)
    for i, s in enumerate(steps):
        assert s.obs.shape == (E, n, spec.obs_dim) and s.obs.dtype == torch.float32
        assert s.state.shape == (E, spec.state_dim) and s.agent_state.shape == (E, n, spec.agent_state_dim)
        assert s.avail_actions.shape == (E, n, spec.n_actions) and s.avail_actions.all()
        assert torch.isfinite(s.obs).all() and torch.isfinite(s.state).all()
        torch.testing.assert_close(s.agent_reward.sum(-1), s.reward)
        if i == 0:
            continue
        ret += s.reward
        length += 1
        done = s.terminated | s.truncated
        torch.testing.assert_close(s.episodes.ret[done], ret[done])
        assert (s.episodes.length[done] == length[done]).all() and (length <= spec.episode_limit).all()
        ret[done], length[done] = 0, 0


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectories(env_id):
    _, a = random_rollout(env_id, 4, 30)
    _, b = random_rollout(env_id, 4, 30)
    _, c = random_rollout(env_id, 5, 30)
    for x, y in zip(a, b):
        assert torch.equal(x.obs, y.obs) and torch.equal(x.agent_reward, y.agent_reward)
    assert not all(torch.equal(x.state, z.state) for x, z in zip(a, c))


@pytest.mark.parametrize("env_id,message", [
    ("cacc:cruise", "unknown cacc scenario 'cruise'"),
    ("cacc:catchup,eval=2", "eval must be 0 or 1"),
    ("cacc:catchup,speed=3", "takes options eval=0|1 and scale=<float>"),
    ("cacc:catchup,scale=big", "scale must be a number"),
])
def test_bad_ids_are_one_line_errors(env_id, message):
    with pytest.raises(EnvError, match=message) as err:
        make_env(env_id, 2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("env_id", ["cacc:catchup", "cacc:slowdown"])
def test_mappo_runs_end_to_end(env_id, tmp_path):
    r = run(MAPPO, "--env-id", env_id, "--total-timesteps", "320", "--num-envs", "4", "--num-steps", "40",
            "--update-epochs", "2", "--num-minibatches", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(scalars(only_run_dir(tmp_path), "losses/value_loss")) >= 1


# ---- cacc: ---------------------------------------------------------------------------------------
def ovm_np(h):
    """Chu et al.'s optimal velocity, written piecewise."""
    h = np.asarray(h, dtype=np.float64)
    out = np.where(h <= 5, 0.0, 15.0 * (1 - np.cos(np.pi * (h - 5) / 30)))
    return np.where(h >= 35, 30.0, out)


def test_cacc_ovm_speed():
    from cleanmarl.envs.cacc import ovm_speed

    h = np.array([0.0, 5.0, 5.5, 12.0, 20.0, 34.9, 35.0, 80.0])
    np.testing.assert_allclose(ovm_speed(torch.tensor(h)).numpy(), ovm_np(h), rtol=1e-6, atol=1e-6)
    assert ovm_speed(torch.tensor(20.0)).item() == pytest.approx(15.0)  # V(h*) = v*


@pytest.mark.parametrize("train", [True, False])
def test_cacc_step_against_hand_computation(train):
    env = make_env("cacc:catchup" + ("" if train else ",eval=1"), 2, seed=1)
    env.reset()
    h = np.array([[30.0, 20.0, 4.0, 8.0, 36.0, 15.0, 22.0, 19.0], [20.0] * 8])
    v = np.array([[15.0, 16.0, 14.0, 29.9, 10.0, 0.05, 15.0, 18.0], [15.0] * 8])
    env.h, env.v = torch.tensor(h, dtype=torch.float32), torch.tensor(v, dtype=torch.float32)
    actions = np.array([[0, 1, 2, 3, 3, 1, 2, 1], [3] * 8])
    s = env.step(torch.tensor(actions))
    gains = np.array([(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)])
    alpha, beta = gains[actions, 0], gains[actions, 1]
    v_lead = np.concatenate([np.full((2, 1), 15.0), v[:, :-1]], 1)  # catch-up lead at 15 m/s
    u = alpha * (ovm_np(h) - v) + beta * (v_lead - v)
    v_next = np.clip(v + 0.1 * np.clip(u, -2.5, 2.5), 0, 30)
    u_real = (v_next - v) / 0.1
    v_lead_next = np.concatenate([np.full((2, 1), 15.0), v_next[:, :-1]], 1)
    h_next = h + 0.05 * (v_lead + v_lead_next - v - v_next)
    r = -(h_next - 20) ** 2 - (v_next - 15) ** 2 - 0.1 * u_real**2
    if train:
        r -= 5 * np.minimum(h_next - 10, 0) ** 2
    np.testing.assert_allclose(env.v.numpy(), v_next, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(env.h.numpy(), h_next, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s.agent_reward.numpy(), r, rtol=1e-4, atol=1e-3)
    assert not s.terminated.any()
    # the platoon at (h*, v*) with any gains stays there at zero reward
    assert s.agent_reward[1].abs().max() < 1e-4
    # features: (v - v*)/v*, clipped (v_lead - v)/5, clipped (V(h) - v)/5, (h + (v_lead - v) dt - h*)/h*, u/2.5
    f = np.stack([(v_next - 15) / 15, np.clip((v_lead_next - v_next) / 5, -2, 2),
                  np.clip((ovm_np(h_next) - v_next) / 5, -2, 2), (h_next + (v_lead_next - v_next) * 0.1 - 20) / 20,
                  u_real / 2.5], -1)
    np.testing.assert_allclose(s.agent_state.numpy(), f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s.state.numpy(), f.reshape(2, -1), rtol=1e-4, atol=1e-4)
    # observation: own features, the vehicle ahead's, the vehicle behind's (zeros at the ends)
    np.testing.assert_allclose(s.obs[0, 3].numpy(), np.concatenate([f[0, 3], f[0, 2], f[0, 4]]), rtol=1e-4, atol=1e-4)
    assert (s.obs[:, 0, 5:10] == 0).all() and (s.obs[:, 7, 10:] == 0).all()


def test_cacc_scale_multiplies_rewards():
    _, a = random_rollout("cacc:slowdown", 2, 5)
    _, b = random_rollout("cacc:slowdown,scale=0.001", 2, 5)
    for x, y in zip(a, b):
        torch.testing.assert_close(y.agent_reward, 0.001 * x.agent_reward)


def test_cacc_collision_costs_everyone_and_ends_the_episode():
    env = make_env("cacc:catchup", 3, seed=0)
    env.reset()
    env.h[0, 4] = 1.05  # vehicle 5 closes in on vehicle 4 at 5 m/s: gap below 1 m after this step
    env.v[0, 4] = 20.0
    s = env.step(torch.zeros(3, 8, dtype=torch.long))  # (α, β) = (0, 0): nobody brakes
    assert s.terminated.tolist() == [True, False, False] and not s.truncated.any()
    assert (s.agent_reward[0] == -1000).all() and s.reward[0] == -8000
    assert (s.agent_reward[1:] > -1000).all()
    assert s.final_state[0].ne(s.state[0]).any()  # env 0 was reset: a fresh catch-up start
    assert s.episodes.length[0] == 1
    assert env.h[0, 1:].eq(20).all() and env.v[0].eq(15).all()


def test_cacc_initial_conditions():
    env = make_env("cacc:catchup", 500, seed=3)
    env.reset()
    lead_gap = env.h[:, 0]
    assert lead_gap.min() >= 30 and lead_gap.max() < 50 and lead_gap.std() > 3  # 20 (1.5 + U)
    assert env.h[:, 1:].eq(20).all() and env.v.eq(15).all()
    env = make_env("cacc:slowdown", 500, seed=3)
    env.reset()
    v0 = env.v[:, 0]
    assert v0.min() >= 22.5 and v0.max() < 37.5 and v0.std() > 2  # 15 (1.5 + U), one draw per platoon
    assert env.v.eq(v0.unsqueeze(-1)).all() and env.h.eq(20).all()
    torch.testing.assert_close(env.v_lead0, v0)


def test_cacc_slowdown_lead_profile():
    env = make_env("cacc:slowdown", 2, seed=0)
    env.reset()
    v0 = env.v_lead0.clone()
    t = torch.arange(0, 601)
    profile = torch.stack([env.lead_speed(torch.full((2,), int(k))) for k in t], 1)  # [2, 601]
    expected = np.stack([np.concatenate([np.linspace(x, 15.0, 300), np.full(301, 15.0)]) for x in v0.numpy()])
    np.testing.assert_allclose(profile.numpy(), expected, rtol=1e-5, atol=1e-4)
    # vehicle 1 sees the lead's speed through its features: (v_lead - v)/5 clipped
    s = env.step(torch.zeros(2, 8, dtype=torch.long))
    lead_next = torch.tensor(expected[:, 1], dtype=torch.float32)
    torch.testing.assert_close(s.agent_state[:, 0, 1], ((lead_next - env.v[:, 0]) / 5).clamp(-2, 2))
