"""The smac:/smacv2: families against a test double of StarCraft2Env, the missing-game and
missing-package messages, and MAPPO/HAPPO smoke tests end to end with dead agents and logged win rates."""

import json
import runpy
import sys
import types
from pathlib import Path

import pytest
import torch

from cleanmarl.envs import EnvError, make_env, smac_env
from cleanmarl.envs.smac_env import StarCraftEnv, smacv2_config
from tests.fake_sc2 import FakeStarCraft2Env
from tests.test_scripts import only_run_dir, scalars

ROOT = Path(__file__).resolve().parents[1]
E = 3


def fake_env(num_envs=E, seed=0, **kwargs):
    return StarCraftEnv("smac:fake", "smac", "fake", num_envs, seed, "cpu", {},
                        factory=lambda s: FakeStarCraft2Env(seed=s, **kwargs))


def random_available(avail, gen):
    return torch.multinomial(avail.flatten(0, 1).float(), 1, generator=gen).view(avail.shape[:2])


def attack_first_enemy(avail):
    """Attack the first living enemy; the dead take the no-op."""
    attack = avail[..., 6:].float().argmax(-1) + 6
    return torch.where(avail[..., 6:].any(-1), attack, torch.zeros_like(attack))


def test_spec_and_shapes():
    env = fake_env()
    spec = env.spec
    assert (spec.n_agents, spec.n_actions, spec.obs_dim, spec.state_dim, spec.episode_limit) == (3, 9, 7, 8, 12)
    assert spec.discrete and spec.has_win
    s = env.reset()
    assert s.obs.shape == (E, 3, 7) and s.state.shape == (E, 8) and s.avail_actions.shape == (E, 3, 9)
    assert s.avail_actions.dtype == torch.bool and s.active.all()
    assert not s.avail_actions[..., 0].any()  # the living may not no-op


def test_dead_agents_are_inactive_and_only_noop():
    env = fake_env()
    s = env.reset()
    gen = torch.Generator().manual_seed(0)
    for t in range(3):
        s = env.step(random_available(s.avail_actions, gen))
        dead = t + 1 >= 2
        assert (s.active[:, 2] == (not dead)).all() and s.active[:, :2].all()
        if dead:
            assert s.avail_actions[:, 2, 0].all() and not s.avail_actions[:, 2, 1:].any()
            assert (s.obs[:, 2] == 0).all()


def test_win_terminates_and_time_limit_truncates():
    env = fake_env()
    s = env.reset()
    for t in range(10):  # 2 live attackers after step 2, 3 enemies of 2 hp: 6 hits
        s = env.step(attack_first_enemy(s.avail_actions))
        if s.episodes.done.any():
            break
    assert s.terminated.all() and not s.truncated.any() and s.episodes.win.all()
    assert (s.episodes.ret == s.episodes.ret[0]).all() and s.episodes.ret[0] == 6 + 10
    assert s.active.all()  # reset: everyone alive again

    s = env.reset()
    for t in range(12):  # "stop" every step: nobody wins, the time limit ends the episode
        assert not s.episodes.done.any()
        s = env.step(torch.where(s.active, torch.ones(E, 3, dtype=torch.long), torch.zeros(E, 3, dtype=torch.long)))
    assert s.truncated.all() and not s.terminated.any() and not s.episodes.win.any()
    assert (s.episodes.length == 12).all()


def test_same_seed_same_trajectories():
    def run():
        env, gen = fake_env(seed=5), torch.Generator().manual_seed(1)
        s, out = env.reset(), []
        for _ in range(15):
            s = env.step(random_available(s.avail_actions, gen))
            out.append((s.obs.clone(), s.reward.clone()))
        return out

    for (o1, r1), (o2, r2) in zip(run(), run()):
        assert torch.equal(o1, o2) and torch.equal(r1, r2)


def test_smacv2_config():
    cfg = smacv2_config("zerg", 5, 6)
    assert cfg["n_units"] == 5 and cfg["n_enemies"] == 6
    assert cfg["team_gen"]["unit_types"] == ["zergling", "hydralisk", "baneling"]
    assert cfg["team_gen"]["exception_unit_types"] == ["baneling"]


# ---- what is missing, in one line ---------------------------------------------------------------
def test_missing_package_and_game(monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "smac", None)
    with pytest.raises(EnvError) as info:
        make_env("smac:8m", 1)
    msg = str(info.value)
    assert "\n" not in msg and "SMAC package is not installed: pip install git+" in msg
    assert f"StarCraft II game (4.10, with the SMAC maps) is not at {tmp_path}" in msg


def test_smac3_is_recognized(monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "smac", types.ModuleType("smac"))  # SMAC3 has no smac.env
    monkeypatch.setitem(sys.modules, "smac.env", None)
    with pytest.raises(EnvError, match="the installed 'smac' package is SMAC3"):
        make_env("smac:8m", 1)


def test_missing_game_only(monkeypatch, tmp_path):
    fake_pkg = types.ModuleType("smac.env")
    fake_pkg.StarCraft2Env = FakeStarCraft2Env
    monkeypatch.setitem(sys.modules, "smac", types.ModuleType("smac"))
    monkeypatch.setitem(sys.modules, "smac.env", fake_pkg)
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    with pytest.raises(EnvError, match=r"^smac:3m cannot start: the StarCraft II game .* set SC2PATH \(see docs"
                       r".*\); without StarCraft II, JaxMARL's SMAX plays the same map: --env-id smax:3m "):
        make_env("smac:3m", 1)
    (tmp_path / "nowhere" / "Versions").mkdir(parents=True)  # with the game present it launches
    env = make_env("smac:3m", 2)
    assert env.spec.n_agents == 3


@pytest.mark.parametrize("env_id,match", [
    ("smacv2:elves_5_vs_5", "bad SMACv2 scenario 'elves_5_vs_5'"),
    ("smacv2:protoss_5_vs_5", "SMACv2 package is not installed"),
    ("smac:8m,difficulty=7", "takes no key=value options"),
])
def test_bad_smac_ids(env_id, match, monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(EnvError, match=match):
        make_env(env_id, 1)


# ---- smoke tests of the discrete scripts on the double: dead agents, win rates logged (no learning claim)
@pytest.mark.parametrize("script", ["mappo.py", "happo.py", "optimistic_mappo.py"])
def test_script_smoke_on_starcraft_double(script, monkeypatch, tmp_path):
    monkeypatch.setattr(smac_env, "game_factory", lambda env_id, family, scenario: (lambda seed: FakeStarCraft2Env(seed=seed)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, "--env-id", "smac:fake3m", "--total-timesteps", "960", "--num-envs", "4",
                                      "--num-steps", "40", "--save-model", "--eval-episodes", "3"])
    runpy.run_path(str(ROOT / "cleanmarl" / script), run_name="__main__")
    run_dir = only_run_dir(tmp_path)
    win_rates = [v for _, v in scalars(run_dir, "charts/win_rate")]
    assert len(win_rates) == 6 and all(0.0 <= w <= 1.0 for w in win_rates)
    assert len(scalars(run_dir, "eval/win_rate")) == 1
    summary = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= summary["eval_win_rate"] <= 1.0
