"""The training scripts: their pure functions, end-to-end runs on every family, bad input,
determinism, and learning to a known optimum."""

import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cleanmarl.mappo import RunningMeanStd, compute_gae, value_loss
from tests.test_envs import needs_mujoco

ROOT = Path(__file__).resolve().parents[1]
MAPPO = ROOT / "cleanmarl" / "mappo.py"
MAPPO_CONT = ROOT / "cleanmarl" / "mappo_continuous.py"
RMAPPO = ROOT / "cleanmarl" / "rmappo.py"


def run(script, *flags, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(script), *flags], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def only_run_dir(cwd):
    (run_dir,) = (cwd / "runs").iterdir()
    return run_dir


# ---- pure functions ---------------------------------------------------------------------------
def test_gae_against_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    dones = torch.tensor([[0.0], [0.0], [1.0]])  # an episode ended before step 2
    next_value, next_done = torch.tensor([4.0]), torch.tensor([0.0])
    d2 = 3.0 + gamma * 4.0 - 1.5
    d1 = 2.0 + 0.0 - 1.0  # step 1 was the last of its episode: no bootstrap, no carry-over
    d0 = 1.0 + gamma * 1.0 - 0.5
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [d2]])
    torch.testing.assert_close(compute_gae(rewards, values, dones, next_value, next_done, gamma, lam), expected)


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd(eps=0.0)
    rms.count.fill_(0)
    data = [torch.randn(50) * 3 + 2, torch.randn(70) * 0.5 - 1, torch.randn(30)]
    for x in data:
        rms.update(x)
    allx = torch.cat(data).double().numpy()
    assert rms.mean.item() == pytest.approx(allx.mean(), rel=1e-5)
    assert rms.var.item() == pytest.approx(allx.var(), rel=1e-5)
    x = torch.tensor([0.3, -2.0])
    torch.testing.assert_close(rms.denormalize(rms.normalize(x)), x)


def test_value_loss_clipping():
    new, old, target = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([3.0])
    # unclipped error 1, clipped value 0.2 has error 2.8: the max (pessimistic) loss is taken
    assert value_loss(new, old, target, 0.2, True, 0.0).item() == pytest.approx(0.5 * 2.8**2)
    assert value_loss(new, old, target, 0.2, False, 0.0).item() == pytest.approx(0.5)
    assert value_loss(new, old, target, 0.2, False, 0.5).item() == pytest.approx(0.5 * (1.0 - 0.25))


# ---- end to end -------------------------------------------------------------------------------
@pytest.mark.parametrize("script,env_id", [
    (MAPPO, "matrix:team"),
    (MAPPO, "vmas:give_way,max_steps=20"),
    (MAPPO_CONT, "diff:5agents"),
    (MAPPO_CONT, "vmas:navigation,max_steps=20"),
    pytest.param(MAPPO_CONT, "mamujoco:HalfCheetah-6x1,max_steps=20", marks=needs_mujoco),
])
def test_script_runs_and_logs(script, env_id, tmp_path, extra=()):
    r = run(script, "--env-id", env_id, "--total-timesteps", "320", "--num-envs", "4", "--num-steps", "40",
            "--update-epochs", "2", "--num-minibatches", "2", "--save-model", "--eval-episodes", "2", *extra,
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith(f"{env_id}__{script.stem}__1__")
    for tag in ["charts/episodic_return", "charts/SPS", "losses/value_loss", "losses/policy_loss",
                "losses/entropy", "charts/learning_rate"]:
        assert len(scalars(run_dir, tag)) >= 1, tag
    if script.stem.startswith("cora"):
        for tag in ["core/epsilon", "core/violation_ratio", "core/alloc_std", "core/qp_ms", "core/coalition_ms",
                    "core/equal_split_frac", "core/adv_corr", "charts/q_learning_rate",
                    "losses/q_loss"]:
            assert len(scalars(run_dir, tag)) >= 1, tag
    # each iteration's stages, timed: they add up to time/iteration_ms
    stages = ["time/rollout_ms", "time/gae_ms", "time/update_ms", "time/logging_ms", "time/snapshot_ms"]
    if script.stem.startswith("cora"):
        stages += ["core/coalition_ms", "core/qp_ms", "core/diagnostics_ms", "core/q_critics_ms"]
    total = scalars(run_dir, "time/iteration_ms")
    laps = [scalars(run_dir, tag) for tag in stages]
    assert len(total) >= 1 and all(len(lap) == len(total) for lap in laps), stages
    for i, (_, iteration_ms) in enumerate(total):
        assert all(lap[i][1] >= 0 for lap in laps)
        assert sum(lap[i][1] for lap in laps) == pytest.approx(iteration_ms, rel=1e-4)
    assert (run_dir / f"{script.stem}.cleanmarl_model").exists()
    summary = json.loads((run_dir / "eval.json").read_text())
    assert np.isfinite(summary["eval_return_mean"])
    assert "SPS=" in r.stdout


@pytest.mark.parametrize("script,flags,message", [
    (MAPPO, ["--env-id", "foo:bar"], "unknown env id 'foo:bar'"),
    (MAPPO, ["--env-id", "vmas:navigaton"], "unknown VMAS scenario 'navigaton'"),
    (MAPPO, ["--env-id", "diff:2agents"], "continuous actions only: run it with a continuous-action script such as cleanmarl/mappo_continuous.py"),
    (MAPPO_CONT, ["--env-id", "matrix:penalty"], "discrete actions only: run it with a discrete-action script such as cleanmarl/mappo.py"),
    (MAPPO, ["--num-minibatches", "7"], "--num-minibatches (7) must divide"),
    (MAPPO, ["--total-timesteps", "10"], "is less than one rollout"),
    (RMAPPO, ["--chunk-length", "8"], "--chunk-length (8) must divide --num-steps (100)"),
    (RMAPPO, ["--num-minibatches", "16"], "--num-minibatches (16) must divide the rollout's sequences"),
])
def test_bad_input_is_one_line(script, flags, message, tmp_path):
    r = run(script, *flags, cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr


@pytest.mark.parametrize("script,env_id", [(MAPPO, "vmas:navigation,max_steps=25"), (MAPPO_CONT, "diff:2agents")])
def test_same_seed_same_returns(script, env_id, tmp_path):
    curves = []
    for name in ("a", "b"):
        cwd = tmp_path / name
        cwd.mkdir()
        r = run(script, "--env-id", env_id, "--total-timesteps", "1000", "--num-envs", "4", "--num-steps", "25",
                "--seed", "3", cwd=cwd)
        assert r.returncode == 0, r.stderr
        curves.append(scalars(only_run_dir(cwd), "charts/episodic_return"))
    assert len(curves[0]) == 10 and curves[0] == curves[1]


def test_mappo_reaches_the_optimum_of_the_penalty_game(tmp_path):
    """Penalty game with k = 0: optimum 10 at (0,0) or (2,2), a safe 2 at (1,1). MAPPO must
    coordinate on an optimal joint action (with k = -100 it falls into the safe one instead).
    Measured on seed 1 (greedy / final training return): MAPPO 10 / 9.7, the untrained policy
    (learning rate 0) 0 / 2.9."""
    r = run(MAPPO, "--env-id", "matrix:penalty,k=0", "--seed", "1", "--total-timesteps", "4000",
            "--num-steps", "50", "--save-model", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((only_run_dir(tmp_path) / "eval.json").read_text())
    assert summary["optimal_return"] == 10.0
    assert summary["eval_return_mean"] == 10.0
    assert scalars(only_run_dir(tmp_path), "charts/episodic_return")[-1][1] >= 8.0


def test_ctrl_c_keeps_logs_and_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a runner started in the background (`cmd &`) passes SIGINT on as ignored: start the child with
    # the default disposition, as from a terminal, so that Ctrl-C reaches the script
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        proc = subprocess.Popen([sys.executable, str(MAPPO), "--env-id", "matrix:team", "--total-timesteps",
                                 "10000000", "--save-model"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout.readline().startswith("run: runs/matrix:team__mappo__1__")
        assert proc.stdout.readline().startswith("hyperparameters (CORA Table V: matrix games for the flags not given)")
        assert proc.stdout.readline().startswith("iter 1/")  # training has started and logged
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "mappo.cleanmarl_model").exists()
    assert len(scalars(run_dir, "charts/episodic_return")) >= 1


def test_mappo_continuous_reaches_the_global_peak_of_the_differential_game(tmp_path):
    """diff:2agents with seed 2: Eq. (25) with 6 fields; the global peak is 21.17. Measured (greedy /
    final training return): MAPPO 21.17 / 15.5, the untrained policy (learning rate 0) 15.15 / 12.2
    (its mean action already sits on a local peak)."""
    r = run(MAPPO_CONT, "--env-id", "diff:2agents", "--seed", "2", "--total-timesteps", "30000",
            "--save-model", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((only_run_dir(tmp_path) / "eval.json").read_text())
    assert summary["eval_return_mean"] >= summary["optimal_return"] - 0.01
    assert scalars(only_run_dir(tmp_path), "charts/episodic_return")[-1][1] >= 14.0


def test_recurrent_actor_unroll_steps_the_gru_with_resets():
    """RecurrentActor.unroll over sequences equals stepping the GRU by hand, with h zeroed at the
    steps where an episode starts (and only there)."""
    from cleanmarl.rmappo import RecurrentActor

    torch.manual_seed(0)
    M, L, n, d, A, H = 5, 6, 3, 4, 5, 8
    actor = RecurrentActor(d, n, A, H, agent_id=True)
    obs, avail = torch.randn(M, L, n, d), torch.rand(M, L, n, A) < 0.7
    avail[..., 0] = True
    h0, starts = torch.randn(M, n, H), (torch.rand(M, L) < 0.3).float()
    starts[0, 3] = 1.0
    cell, ids = actor.gru, torch.eye(n).expand(M, n, n)
    h, expected = h0.clone(), []
    for t in range(L):
        h = torch.where(starts[:, t, None, None] > 0, torch.zeros_like(h), h)
        x = torch.tanh(actor.base[0](torch.cat([obs[:, t], ids], -1)))
        h = torch.stack([cell(x[:, i], h[:, i]) for i in range(n)], 1)
        expected.append(actor.head(h).masked_fill(~avail[:, t], -1e10))
    torch.testing.assert_close(actor.unroll(obs, avail, h0, starts), torch.stack(expected, 1))
    # a reset cuts the history: sequence 0's logits from step 3 on ignore everything before
    other = obs.clone()
    other[0, :3] = torch.randn(3, n, d)
    torch.testing.assert_close(actor.unroll(other, avail, torch.randn(M, n, H), starts)[0, 3:],
                               actor.unroll(obs, avail, h0, starts)[0, 3:])


def test_recurrent_update_sees_the_rollouts_policy(tmp_path):
    """In rmappo.py, the update's sequences (reordered chunks, their stored first hidden
    states, resets at episode starts mid-chunk) must give back the rollout's log-probabilities:
    at a negligible learning rate the one full-batch epoch's KL is 0. Episodes of 100 steps end
    inside the 7-step chunks of 35-step rollouts. (Dropping the resets raises it to ~1e-8.)"""
    r = run(RMAPPO, "--env-id", "vmas:navigation", "--num-envs", "8", "--num-steps", "35", "--chunk-length", "7",
            "--total-timesteps", "11200", "--update-epochs", "1", "--learning-rate", "1e-9",
            "--critic-learning-rate", "1e-9", "--save-model", "--eval-episodes", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(tmp_path)
    assert max(v for _, v in scalars(run_dir, "losses/approx_kl")) < 1e-10
    assert max(v for _, v in scalars(run_dir, "losses/clipfrac")) == 0.0
    assert (run_dir / "eval.json").exists()


def test_actor_respects_action_masks():
    from cleanmarl.mappo import Actor

    torch.manual_seed(0)
    actor = Actor(obs_dim=4, n_agents=3, n_actions=5, hidden=16, agent_id=True)
    obs = torch.randn(64, 3, 4)
    avail = torch.rand(64, 3, 5) < 0.5
    avail[..., 2] = True  # at least one available action everywhere
    dist = actor.dist(obs, avail)
    assert (dist.probs[~avail] == 0).all()
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(64, 3))
    for _ in range(20):
        a = dist.sample()
        assert avail.gather(-1, a.unsqueeze(-1)).all()
    assert avail.gather(-1, actor(obs, avail).argmax(-1, keepdim=True)).all()  # greedy evaluation too
    assert torch.isfinite(dist.entropy()).all() and torch.isfinite(dist.log_prob(dist.sample())).all()


def test_gaussian_actor_log_prob_sums_action_dims():
    from cleanmarl.mappo_continuous import Actor

    actor = Actor(obs_dim=2, n_agents=2, action_dim=3, hidden=8, agent_id=False, init_log_std=-0.5)
    obs = torch.randn(5, 2, 2)
    dist = actor.dist(obs)
    a = dist.sample()
    mean, std = actor(obs), torch.tensor(-0.5).exp()
    by_hand = (-((a - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
    torch.testing.assert_close(dist.log_prob(a).sum(-1), by_hand)


# ---- Optimistic MAPPO and HAPPO -----------------------------------------------------------------
OPT = ROOT / "cleanmarl" / "optimistic_mappo.py"
OPT_CONT = ROOT / "cleanmarl" / "optimistic_mappo_continuous.py"
HAPPO = ROOT / "cleanmarl" / "happo.py"
HAPPO_CONT = ROOT / "cleanmarl" / "happo_continuous.py"


@pytest.mark.parametrize("module", ["optimistic_mappo", "optimistic_mappo_continuous"])
def test_optimistic_transform(module):
    optimistic_advantage = importlib.import_module(f"cleanmarl.{module}").optimistic_advantage
    adv = torch.tensor([-2.0, -0.5, 0.0, 1.5])
    torch.testing.assert_close(optimistic_advantage(adv, 0.0), torch.tensor([0.0, 0.0, 0.0, 1.5]))
    torch.testing.assert_close(optimistic_advantage(adv, 0.1), torch.tensor([-0.2, -0.05, 0.0, 1.5]))
    torch.testing.assert_close(optimistic_advantage(adv, 1.0), adv)


@pytest.mark.parametrize("module", ["happo", "happo_continuous", "cora_happo", "cora_happo_continuous"])
def test_happo_surrogate_by_hand(module):
    happo_surrogate = importlib.import_module(f"cleanmarl.{module}").happo_surrogate
    ratio, adv, factor = torch.tensor([1.5, 0.5, 1.1]), torch.tensor([2.0, -1.0, -3.0]), torch.tensor([0.5, 2.0, 1.0])
    # min(r A, clip(r, 0.8, 1.2) A): [min(3, 2.4), min(-0.5, -0.8), min(-3.3, -3.3)]
    expected = factor * torch.tensor([2.4, -0.8, -3.3])
    torch.testing.assert_close(happo_surrogate(ratio, adv, factor, 0.2), expected)


def _happo_batch(n=3, B=32, A=4, obs_dim=5):
    from types import SimpleNamespace

    from cleanmarl.happo import Actors

    torch.manual_seed(0)
    actors = Actors(obs_dim, n, A, hidden=16)
    optimizers = [torch.optim.Adam(net.parameters(), lr=0.05) for net in actors.agents]
    obs, avail = torch.randn(B, n, obs_dim), torch.ones(B, n, A, dtype=torch.bool)
    with torch.no_grad():
        dist = actors.dist(obs, avail)
        actions = dist.sample()
        logprobs = dist.log_prob(actions)
    args = SimpleNamespace(update_epochs=3, minibatch_size=B // 2, clip_coef=0.2, norm_adv=True, ent_coef=0.0,
                           max_grad_norm=10.0, target_kl=None)
    return actors, optimizers, obs, avail, actions, logprobs, torch.randn(B), args


def test_happo_factor_is_the_product_of_earlier_agents_ratios():
    from cleanmarl.happo import sequential_actor_update

    actors, optimizers, obs, avail, actions, logprobs, adv, args = _happo_batch()
    perm = [2, 0, 1]
    active = torch.ones_like(actions, dtype=torch.bool)
    factors, _ = sequential_actor_update(actors, optimizers, perm, obs, avail, active, actions, logprobs, adv, args)
    with torch.no_grad():  # each agent's final policy is the one its successors saw
        ratios = (actors.dist(obs, avail).log_prob(actions) - logprobs).exp()  # [B, n]
    assert not torch.allclose(ratios, torch.ones_like(ratios))  # the agents did move
    torch.testing.assert_close(factors[2], torch.ones(32))
    torch.testing.assert_close(factors[0], ratios[:, 2])
    torch.testing.assert_close(factors[1], ratios[:, 2] * ratios[:, 0])


def test_happo_continuous_factor_is_the_product_of_earlier_agents_ratios():
    """The same check for Gaussian policies (happo_continuous.py has its own sequential update)."""
    from types import SimpleNamespace

    from cleanmarl.happo_continuous import Actors, sequential_actor_update

    n, B, D, obs_dim = 3, 32, 2, 5
    torch.manual_seed(0)
    actors = Actors(obs_dim, n, D, hidden=16, init_log_std=0.0)
    optimizers = [torch.optim.Adam(list(net.parameters()) + [log_std], lr=0.05)
                  for net, log_std in zip(actors.agents, actors.log_stds)]
    obs = torch.randn(B, n, obs_dim)
    with torch.no_grad():
        dist = actors.dist(obs)
        actions = dist.sample()
        logprobs = dist.log_prob(actions).sum(-1)
    args = SimpleNamespace(update_epochs=3, minibatch_size=B // 2, clip_coef=0.2, norm_adv=True, ent_coef=0.0,
                           max_grad_norm=10.0, target_kl=None)
    factors, _ = sequential_actor_update(actors, optimizers, [2, 0, 1], obs, actions, logprobs, torch.randn(B), args)
    with torch.no_grad():
        ratios = (actors.dist(obs).log_prob(actions).sum(-1) - logprobs).exp()  # [B, n]
    assert not torch.allclose(ratios, torch.ones_like(ratios))
    torch.testing.assert_close(factors[2], torch.ones(B))
    torch.testing.assert_close(factors[0], ratios[:, 2])
    torch.testing.assert_close(factors[1], ratios[:, 2] * ratios[:, 0])


def test_happo_agent_update_changes_only_its_own_parameters():
    from cleanmarl.happo import sequential_actor_update

    actors, optimizers, obs, avail, actions, logprobs, adv, args = _happo_batch()
    before = [[p.clone() for p in net.parameters()] for net in actors.agents]
    active = torch.ones_like(actions, dtype=torch.bool)
    sequential_actor_update(actors, optimizers, [1], obs, avail, active, actions, logprobs, adv, args)
    for k, net in enumerate(actors.agents):
        same = all(torch.equal(p, q) for p, q in zip(before[k], net.parameters()))
        assert same == (k != 1), k


def test_happo_batched_forward_matches_each_agents_network():
    actors, _, obs, avail, *_ = _happo_batch()
    batched = actors(obs, avail)
    for k, net in enumerate(actors.agents):
        torch.testing.assert_close(batched[:, k], net(obs[:, k]))


@pytest.mark.parametrize("script,env_id", [
    (OPT, "matrix:climbing"), (OPT, "vmas:give_way,max_steps=20"),
    (OPT_CONT, "diff:2agents"), (OPT_CONT, "vmas:navigation,max_steps=20"),
    (HAPPO, "matrix:team"), (HAPPO, "vmas:give_way,max_steps=20"),
    (HAPPO_CONT, "diff:5agents"), (HAPPO_CONT, "vmas:navigation,max_steps=20"),
    pytest.param(HAPPO_CONT, "mamujoco:Ant-4x2,max_steps=20", marks=needs_mujoco),
])
def test_baseline_scripts_run_and_log(script, env_id, tmp_path):
    test_script_runs_and_logs(script, env_id, tmp_path)


@pytest.mark.parametrize("script,env_id", [
    (MAPPO, "matrix:team"), (MAPPO_CONT, "diff:5agents"), (OPT, "vmas:give_way,max_steps=20"),
    (OPT_CONT, "diff:2agents"), (ROOT / "cleanmarl" / "ilvf_ppo.py", "coupled:ring"),
])
def test_mappo_family_runs_with_an_actor_per_agent(script, env_id, tmp_path):
    test_script_runs_and_logs(script, env_id, tmp_path, extra=["--no-share-actor"])


def test_optimistic_mappo_escapes_relative_overgeneralization(tmp_path):
    """Penalty game, k = -100: on the same seed and budget MAPPO settles on the safe joint action
    (return 2) while Optimistic MAPPO, which ignores partners' bad exploration, finds 10. Measured
    on seed 1 (greedy / final training return): Optimistic MAPPO 10 / 2.8 (its sampling policy still
    explores into the -100 cells), MAPPO 2 / 2.0, the untrained policy (learning rate 0) 0 / -16.7."""
    results = {}
    for script in (MAPPO, OPT):
        cwd = tmp_path / script.stem
        cwd.mkdir()
        r = run(script, "--env-id", "matrix:penalty", "--seed", "1", "--total-timesteps", "10000", "--save-model", cwd=cwd)
        assert r.returncode == 0, r.stderr
        results[script.stem] = (json.loads((only_run_dir(cwd) / "eval.json").read_text())["eval_return_mean"],
                                scalars(only_run_dir(cwd), "charts/episodic_return")[-1][1])
    assert results["mappo"][0] == 2.0 and results["optimistic_mappo"][0] == 10.0, results
    assert results["optimistic_mappo"][1] >= results["mappo"][1] + 0.5, results


def test_bad_optimism_leak_is_one_line(tmp_path):
    r = run(OPT, "--optimism-leak", "1.5", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: --optimism-leak must be in [0, 1], got 1.5"


def test_every_script_times_its_stages_with_the_same_stopwatch():
    """`Stopwatch` is re-stated in each of the 12 scripts (they share no code but the env layer):
    the copies must stay verbatim, and a lap adds the time since the previous one to its tag."""
    import inspect
    import time

    names = sorted(p.stem for p in (ROOT / "cleanmarl").glob("*.py") if p.stem != "__init__")
    assert len(names) == 12, names
    sources = {name: inspect.getsource(importlib.import_module(f"cleanmarl.{name}").Stopwatch) for name in names}
    assert len(set(sources.values())) == 1, [n for n in names if sources[n] != sources["mappo"]]
    from cleanmarl.mappo import Stopwatch

    watch = Stopwatch(torch.device("cpu"))
    time.sleep(0.02)
    watch.lap("a")
    watch.lap("b")
    time.sleep(0.01)
    watch.lap("a")
    assert watch.ms["a"] >= 30 and 0 <= watch.ms["b"] < 10 and set(watch.ms) == {"a", "b"}, watch.ms
