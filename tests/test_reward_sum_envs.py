"""The reward-sum families of the ILVF paper (cacc:, mpe:encircle, pcp:): dynamics and rewards
against independent numpy re-computations, who observes whom, determinism, and end-to-end runs."""

import math

import numpy as np
import pytest
import torch

from cleanmarl.envs import EnvError, make_env
from tests.test_scripts import MAPPO, only_run_dir, run, scalars

IDS = ["cacc:catchup", "cacc:slowdown", "cacc:catchup,eval=1", "mpe:encircle-8", "mpe:encircle-20,max_steps=30",
       "mpe:encircle-4,obstacles=0", "pcp:", "pcp:default,dim=4,vision=2,max_steps=30"]
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
    ("cacc:catchup,speed=3", "takes options eval=0|1, scale=<float> and max_steps=T"),
    ("cacc:slowdown,max_steps=0", "max_steps must be an integer >= 1"),
    ("cacc:catchup,scale=big", "scale must be a number"),
    ("mpe:encircle-7", "unknown mpe scenario 'encircle-7'; valid: encircle-<n> with n even >= 4"),
    ("mpe:encircle-2", "unknown mpe scenario 'encircle-2'"),
    ("mpe:spread", "unknown mpe scenario 'spread'"),
    ("mpe:encircle-8,max_steps=0", "max_steps must be an integer >= 1"),
    ("mpe:encircle-8,radius=1", "takes options max_steps=T and obstacles=K"),
    ("pcp:big", "unknown pcp scenario 'big'"),
    ("pcp:,dim=2", "need integers dim >= 3"),
    ("pcp:,prey=2", "pcp takes options dim=D, vision=V, max_steps=T"),
])
def test_bad_ids_are_one_line_errors(env_id, message):
    with pytest.raises(EnvError, match=message) as err:
        make_env(env_id, 2)
    assert "\n" not in str(err.value)


def test_script_reports_a_bad_id_in_one_line(tmp_path):
    r = run(MAPPO, "--env-id", "mpe:encircle-9", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "unknown mpe scenario 'encircle-9'" in r.stderr


@pytest.mark.parametrize("env_id", ["cacc:catchup", "cacc:slowdown", "mpe:encircle-8", "mpe:encircle-20", "pcp:"])
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


def test_cacc_collision_costs_everyone_every_step_left_and_ends_the_episode():
    """Chu et al. pay -1000 per vehicle at the collision step and every step after it; here the
    collision step pays it for all T - t steps left (this one included) and terminates."""
    env = make_env("cacc:catchup", 3, seed=0)
    env.reset()
    env.h[0, 4] = 1.05  # vehicle 5 closes in on vehicle 4 at 5 m/s: gap below 1 m after this step
    env.v[0, 4] = 20.0
    s = env.step(torch.zeros(3, 8, dtype=torch.long))  # (α, β) = (0, 0): nobody brakes
    assert s.terminated.tolist() == [True, False, False] and not s.truncated.any()
    assert (s.agent_reward[0] == -1000 * 600).all() and s.reward[0] == -8000 * 600  # at step 0 of 600
    assert (s.agent_reward[1:] > -1000).all()
    assert s.final_state[0].ne(s.state[0]).any()  # env 0 was reset: a fresh catch-up start
    assert s.episodes.length[0] == 1
    assert env.h[0, 1:].eq(20).all() and env.v[0].eq(15).all()


def _cacc_return(env_id, policy, E=32):
    """Mean team return of the first episode of E envs (seed 0) and the share that crashed."""
    env = make_env(env_id, E, seed=0)
    env.reset()
    ret, crashed, t = torch.full((E,), float("nan")), torch.zeros(E, dtype=torch.bool), 0
    while ret.isnan().any():
        s = env.step(policy(t, E))
        t += 1
        first = s.episodes.done & ret.isnan()
        ret, crashed = torch.where(first, s.episodes.ret, ret), crashed | (first & s.terminated)
    return ret.mean().item(), crashed.float().mean().item()


def test_cacc_crashing_never_pays():
    """Fixed policies, 32 episodes each (docs/envs/cacc.md's table): in both scenarios the policy
    that crashes the platoon scores far below the one that drives safely."""
    def always(a):
        return lambda t, E: torch.full((E, 8), a, dtype=torch.long)

    def ram(t, E):  # vehicle 1 speeds up on its long gap (alpha only) for 40 steps, then holds its speed
        a = torch.full((E, 8), 3, dtype=torch.long)
        a[:, 0] = 1 if t < 40 else 0
        return a

    for env_id, crash_policy, safe_policy in (("cacc:catchup", ram, always(3)), ("cacc:slowdown", always(0), always(3))):
        crash, crash_share = _cacc_return(env_id, crash_policy)
        safe, safe_share = _cacc_return(env_id, safe_policy)
        assert crash_share == 1.0 and safe_share == 0.0, (env_id, crash_share, safe_share)
        assert crash < 10 * safe, (env_id, crash, safe)  # about -4.1M against -46k / -276k


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


# ---- mpe:encircle --------------------------------------------------------------------------------
def encircle_rewards_np(pos, target):
    """Eq. (17)-(18) with the paper's 1-based numbering: only even agents pay for their odd
    neighbours' angular spacing."""
    n = len(pos)
    rel = pos - target
    angle = lambda a, b: math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))
    r = np.zeros(n)
    for i in range(1, n + 1):  # paper numbering
        k = i - 1
        r[k] = -0.1 * (np.linalg.norm(rel[k]) - 0.7) ** 2
        if i % 2 == 0:
            for j in (i - 1, i + 1):
                r[k] -= (angle(rel[k], rel[(j - 1) % n]) - 2 * math.pi / n) ** 2
    return r


def placed_encircle(n, pos, target, vel=None):
    env = make_env(f"mpe:encircle-{n},obstacles=0", 1, seed=0)
    env.reset()
    env.pos = torch.tensor(pos, dtype=torch.float32).unsqueeze(0)
    env.vel = torch.zeros_like(env.pos) if vel is None else torch.tensor(vel, dtype=torch.float32).unsqueeze(0)
    env.target = torch.tensor(target, dtype=torch.float32).unsqueeze(0)
    return env


def test_encircle_rewards_on_hand_placed_agents():
    rng = np.random.default_rng(0)
    for n in (4, 8, 20):
        pos, target = rng.uniform(-2, 2, (n, 2)), rng.uniform(-0.3, 0.3, 2)
        env = placed_encircle(n, pos, target)
        s = env.step(torch.zeros(1, n, dtype=torch.long))  # no-op at rest: nobody moves
        np.testing.assert_allclose(s.agent_reward[0].numpy(), encircle_rewards_np(pos, target), rtol=1e-4, atol=1e-5)
    # the perfect ring: radius 0.7, spacing 2π/n, earns 0 for every agent
    n = 8
    angles = 0.3 + 2 * math.pi * np.arange(n) / n
    ring = np.array([0.1, -0.2]) + 0.7 * np.stack([np.cos(angles), np.sin(angles)], -1)
    s = placed_encircle(n, ring, [0.1, -0.2]).step(torch.zeros(1, n, dtype=torch.long))
    assert s.agent_reward.abs().max() < 1e-5
    # a worked case, n = 4, target at 0: agents 1..4 at angles 0, π/2, π, π/4 and distances 0.7, 1, 0.7, 0.7
    pos = np.array([[0.7, 0], [0, 1.0], [-0.7, 0], [0.7 / math.sqrt(2), 0.7 / math.sqrt(2)]])
    s = placed_encircle(4, pos, [0, 0]).step(torch.zeros(1, 4, dtype=torch.long))
    expected = [0.0, -0.1 * 0.3**2 - 0 - 0, 0.0, -(math.pi / 4 - math.pi / 2) ** 2 - (3 * math.pi / 4 - math.pi / 2) ** 2]
    np.testing.assert_allclose(s.agent_reward[0].numpy(), expected, atol=1e-5)


def test_encircle_reward_coupling_graph():
    """Moving paper agent i (odd) changes the rewards of i, i - 1 and i + 1; moving an even agent
    changes only its own."""
    n = 8
    rng = np.random.default_rng(1)
    pos = rng.uniform(-2, 2, (n, 2))
    base = placed_encircle(n, pos, [0, 0]).step(torch.zeros(1, n, dtype=torch.long)).agent_reward[0]
    for k in range(n):
        moved = pos.copy()
        moved[k] += [0.3, -0.2]
        r = placed_encircle(n, moved, [0, 0]).step(torch.zeros(1, n, dtype=torch.long)).agent_reward[0]
        changed = set(torch.nonzero((r - base).abs() > 1e-6).flatten().tolist())
        paper_odd = k % 2 == 0
        assert changed == ({k, (k - 1) % n, (k + 1) % n} if paper_odd else {k}), (k, changed)
    # the env's influence_graph says the same: column k lists the agents whose reward reads agent k
    graph = placed_encircle(n, pos, [0, 0]).influence_graph
    for k in range(n):
        expected = {k, (k - 1) % n, (k + 1) % n} if k % 2 == 0 else {k}
        assert set(graph[:, k].nonzero().flatten().tolist()) == expected, k


def test_influence_graphs_of_the_reward_sum_families():
    """[i, j] true when agent j's state enters agent i's reward or transition (diagonal true)."""
    def pairs(graph):
        return {(i, j) for i, j in graph.nonzero().tolist() if i != j}

    assert make_env("coupled:ring-4", 1, 0).influence_graph.diagonal().all()
    assert pairs(make_env("coupled:ring-4", 1, 0).influence_graph) == {(0, 3), (1, 0), (2, 1), (3, 2)}  # r_i reads x_{i-1}
    assert pairs(make_env("cacc:catchup", 1, 0).influence_graph) == {(i, i - 1) for i in range(1, 8)}  # follows i - 1
    # action agent 4 + k hears perception agents k and k + 1 (mod 4)
    assert pairs(make_env("pcp:", 1, 0).influence_graph) == {(4, 0), (4, 1), (5, 1), (5, 2), (6, 2), (6, 3), (7, 3), (7, 0)}


def test_encircle_observations_follow_the_graph():
    n = 8
    rng = np.random.default_rng(2)
    pos, vel = rng.uniform(-2, 2, (n, 2)), rng.uniform(-1, 1, (n, 2))
    env = placed_encircle(n, pos, [0.1, 0.2], vel)
    obs, state, own, _ = env._observe()
    obs = obs[0].numpy()
    for k in range(n):
        np.testing.assert_allclose(obs[k, :6], np.concatenate([vel[k], pos[k], [0.1, 0.2] - pos[k]]), rtol=1e-5, atol=1e-6)
        if k % 2 == 0:  # the paper's odd agents see their two (even) neighbours
            p, q = (k - 1) % n, (k + 1) % n
            seen = np.concatenate([pos[p] - pos[k], vel[p], pos[q] - pos[k], vel[q]])
            np.testing.assert_allclose(obs[k, 6:], seen, rtol=1e-5, atol=1e-5)
        else:
            assert (obs[k, 6:] == 0).all()
    torch.testing.assert_close(own, torch.tensor(obs[:, :6]).unsqueeze(0))
    np.testing.assert_allclose(state[0].numpy(), np.concatenate([[0.1, 0.2], pos.ravel(), vel.ravel()]), rtol=1e-6)


def test_encircle_dynamics_and_obstacle_contact():
    env = make_env("mpe:encircle-4,obstacles=1", 1, seed=0)
    env.reset()
    pos = np.array([[1.0, 1.0], [0.42, 0.5], [-1.0, 0.3], [0.0, -1.2]])  # agent 2 touches the obstacle
    vel = np.array([[0.2, 0.0], [0.5, 0.1], [0.0, -0.3], [0.0, 0.0]])
    obstacle = np.array([0.5, 0.5])
    env.pos = torch.tensor(pos, dtype=torch.float32).unsqueeze(0)
    env.vel = torch.tensor(vel, dtype=torch.float32).unsqueeze(0)
    env.obstacles = torch.tensor(obstacle, dtype=torch.float32).view(1, 1, 2)
    actions = np.array([1, 1, 3, 0])
    env.step(torch.tensor(actions).unsqueeze(0))
    direction = np.array([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)], dtype=float)[actions]
    delta = pos - obstacle
    dist = np.linalg.norm(delta, axis=1, keepdims=True)
    penetration = np.logaddexp(0, -(dist - 0.15) / 1e-3) * 1e-3
    force = 5 * direction + 100 * delta / dist * penetration
    vel_next = 0.75 * vel + 0.1 * force
    np.testing.assert_allclose(env.vel[0].numpy(), vel_next, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(env.pos[0].numpy(), pos + 0.1 * vel_next, rtol=1e-5, atol=1e-6)
    assert env.vel[0, 1, 0] < 0.75 * 0.5  # pushed back out of the obstacle against its own thrust


def test_encircle_start_layout():
    env = make_env("mpe:encircle-20", 200, seed=0)
    env.reset()
    d = (env.pos - env.target.unsqueeze(1)).norm(dim=-1)
    assert d.min() >= 1.5 - 1e-5 and d.max() <= 2.0 + 1e-5
    d_obs = (env.obstacles - env.target.unsqueeze(1)).norm(dim=-1)
    assert d_obs.min() >= 0.9 - 1e-5 and d_obs.max() <= 1.2 + 1e-5 and env.obstacles.shape[1] == 4
    assert env.target.abs().max() <= 0.25 and env.vel.eq(0).all()


# ---- pcp: ----------------------------------------------------------------------------------------
MOVES_NP = {0: (-1, 0), 1: (0, 1), 2: (1, 0), 3: (0, -1), 4: (0, 0), 5: (0, 0)}


def pcp_step_np(pos, prey, reached, captured, actions, dim):
    """Seraj et al.'s rules, one agent at a time: agents 0-3 perceive, 4-7 capture."""
    pos, reached, captured = pos.copy(), reached.copy(), captured.copy()
    for i, a in enumerate(actions):
        if i >= 4 and a == 5 and (pos[i] == prey).all():
            captured[i] = True
        if reached[i]:
            continue  # stays on the prey
        dr, dc = MOVES_NP[int(a)]
        pos[i] = [min(max(pos[i][0] + dr, 0), dim - 1), min(max(pos[i][1] + dc, 0), dim - 1)]
    reward = np.full(8, -0.05)
    for i in range(8):
        if (pos[i] == prey).all():
            reached[i] = True
        if (i < 4 and reached[i]) or (i >= 4 and captured[i]):
            reward[i] = 0.0
    win = reached.all() and captured[4:].all()
    return pos, reached, captured, reward, win


def test_pcp_rules_against_numpy_reference():
    env = make_env("pcp:default,dim=3,max_steps=200", 4, seed=0)
    env.reset()
    gen = torch.Generator().manual_seed(0)
    wins = captures = 0
    for _ in range(300):
        # mostly capture attempts once on the prey, so episodes get won
        actions = torch.randint(0, 6, (4, 8), generator=gen)
        actions[:, 4:] = torch.where(torch.rand(4, 4, generator=gen) < 0.3, 5, actions[:, 4:])
        before = [x.clone().numpy() for x in (env.pos, env.prey, env.reached, env.captured)]
        s = env.step(actions)
        for e in range(4):
            pos, reached, captured, reward, win = pcp_step_np(before[0][e], before[1][e], before[2][e], before[3][e],
                                                             actions[e].numpy(), 3)
            np.testing.assert_allclose(s.agent_reward[e].numpy(), reward)
            assert bool(s.terminated[e]) == win and bool(s.episodes.win[e]) == win
            if not (s.terminated[e] or s.truncated[e]):
                assert (env.pos[e].numpy() == pos).all() and (env.reached[e].numpy() == reached).all()
                assert (env.captured[e].numpy() == captured).all()
            wins += win
            captures += int(captured[4:].sum() > before[3][e][4:].sum())
    assert wins >= 3 and captures >= 10
    assert not env.captured[:, :4].any()  # perception agents never capture


def test_pcp_capture_rules_by_hand():
    env = make_env("pcp:", 1, seed=0)
    env.reset()
    env.prey = torch.tensor([[2, 2]])
    env.pos = torch.tensor([[[2, 1], [0, 0], [4, 4], [0, 4], [1, 2], [0, 0], [4, 0], [2, 2]]])
    env.reached[:] = False
    env.reached[0, 7] = True  # action agent 8 already stands on the prey
    s = env.step(torch.tensor([[1, 0, 4, 5, 2, 5, 3, 0]]))
    # agent 1 steps onto the prey (0); 2 hits the wall; 4 "captures" as a perception agent (a stay);
    # 5 reaches the prey but has not captured; 6 captures off the prey (nothing); 8 tries to leave (stays)
    assert env.pos[0].tolist() == [[2, 2], [0, 0], [4, 4], [0, 4], [2, 2], [0, 0], [4, 0], [2, 2]]
    assert s.agent_reward[0].tolist() == pytest.approx([0, -0.05, -0.05, -0.05, -0.05, -0.05, -0.05, -0.05])
    s = env.step(torch.tensor([[3, 4, 4, 4, 0, 4, 4, 5]]))  # 1 and 5 are held on the prey; 8 captures
    assert env.pos[0, 0].tolist() == [2, 2] and env.pos[0, 4].tolist() == [2, 2]
    assert s.agent_reward[0].tolist() == pytest.approx([0, -0.05, -0.05, -0.05, -0.05, -0.05, -0.05, 0])
    assert env.captured[0].tolist() == [False] * 7 + [True]
    # everyone on the prey, the last three action agents capture: a win that ends the episode
    env.pos[0] = torch.tensor([2, 2])
    env.reached[0] = True
    s = env.step(torch.tensor([[4, 4, 4, 4, 5, 5, 5, 4]]))
    assert s.terminated.item() and s.episodes.win.item() and s.reward.item() == 0
    assert s.episodes.length.item() == 3


def views_np(pos, prey, dim, v):
    """Each agent's (2v+1)² x [prey, perception, action, outside] view, by explicit loops."""
    w = 2 * v + 1
    out = np.zeros((8, 4, w, w))
    for i in range(8):
        for a in range(w):
            for b in range(w):
                r, c = pos[i][0] - v + a, pos[i][1] - v + b
                if not (0 <= r < dim and 0 <= c < dim):
                    out[i, 3, a, b] = 1
                    continue
                out[i, 0, a, b] = float(r == prey[0] and c == prey[1])
                out[i, 1, a, b] = sum(1 for j in range(4) if tuple(pos[j]) == (r, c))
                out[i, 2, a, b] = sum(1 for j in range(4, 8) if tuple(pos[j]) == (r, c))
    return out.reshape(8, -1)


@pytest.mark.parametrize("vision", [0, 1, 2])
def test_pcp_views_and_who_hears_whom(vision):
    dim = 5
    env = make_env(f"pcp:default,vision={vision}", 1, seed=0)
    env.reset()
    pos = np.array([[0, 0], [1, 1], [4, 2], [1, 1], [0, 1], [2, 2], [4, 4], [1, 0]])
    prey = np.array([1, 0])
    env.pos, env.prey = torch.tensor(pos).unsqueeze(0), torch.tensor(prey).unsqueeze(0)
    views = views_np(pos, prey, dim, vision)
    np.testing.assert_allclose(env.views()[0].numpy(), views)
    obs = env._observe()[0][0].numpy()
    W = views.shape[1]
    own_pos = pos / (dim - 1)
    for i in range(8):
        np.testing.assert_allclose(obs[i, :2], own_pos[i], rtol=1e-6)
        own_view, heard = obs[i, 4:4 + W], obs[i, 4 + W:]
        if i < 4:  # perception agents see, hear no one
            np.testing.assert_allclose(own_view, views[i])
            assert (heard == 0).all()
        else:  # action agents are blind and hear perception agents k and k + 1 (mod 4)
            assert (own_view == 0).all()
            k = i - 4
            expected = np.concatenate([own_pos[k], views[k], own_pos[(k + 1) % 4], views[(k + 1) % 4]])
            np.testing.assert_allclose(heard, expected, rtol=1e-6)


def test_pcp_start_positions_are_distinct():
    env = make_env("pcp:", 300, seed=1)
    env.reset()
    cells = torch.cat([env.pos, env.prey.unsqueeze(1)], 1)  # [E, 9, 2]
    flat = cells[..., 0] * 5 + cells[..., 1]
    assert all(len(set(row.tolist())) == 9 for row in flat)
    assert flat.min() == 0 and flat.max() == 24 and not env.reached.any() and not env.captured.any()
