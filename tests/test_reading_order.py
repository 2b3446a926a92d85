"""Issue 28: every script reads top-down (algorithm first, one identical run machinery fenced at
the end), checkpoints cannot run code, and the defining steps a reordering could silently break
are pinned: a truncated episode is bootstrapped from V(final state), and HAPPO draws a fresh
agent order at every update."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_scripts import ROOT, only_run_dir, run

SCRIPTS = sorted(p.stem for p in (ROOT / "cleanmarl").glob("*.py") if p.stem != "__init__")
BANNER = "# " + "=" * 98 + "\n# RUN MACHINERY."


def source(script):
    return (ROOT / "cleanmarl" / f"{script}.py").read_text()


def test_the_run_machinery_is_one_copy_fenced_after_the_algorithm():
    blocks = {}
    for script in SCRIPTS:
        text = source(script)
        assert text.count(BANNER) == 1, script
        head, block = text.split(BANNER)
        blocks[script] = block
        assert "\ndef main():\n" in head and block.rstrip().endswith('if __name__ == "__main__":\n    main()'), script
        lines = text.count("\n")
        loop = head.index("        for iteration in range(")
        assert head[:loop].count("\n") < 0.6 * lines, f"{script}: the training loop starts past 60 % of the file"
    assert len(set(blocks.values())) == 1, [s for s in SCRIPTS if blocks[s] != blocks["mappo"]]


@pytest.mark.parametrize("pair,limit", [(("mappo", "cora_mappo"), 60), (("happo", "cora_happo"), 60),
                                        (("mappo", "optimistic_mappo"), 60), (("mappo", "rmappo"), 60)])
def test_diff_shows_the_idea(pair, limit):
    """`diff mappo.py cora_mappo.py` removes little of MAPPO: the shared parts are the same text."""
    out = subprocess.run(["diff", f"cleanmarl/{pair[0]}.py", f"cleanmarl/{pair[1]}.py"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    removed = sum(line.startswith("< ") or line == "<" for line in out.splitlines())
    assert removed <= limit, f"diff {pair[0]}.py {pair[1]}.py removes {removed} lines"


def test_no_path_outside_the_repository_is_cited():
    for path in [*(ROOT / "cleanmarl").glob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        assert "../shared" not in path.read_text(), path


def test_help_hides_the_derived_fields(tmp_path):
    r = run(ROOT / "cleanmarl" / "mappo.py", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--hidden-dim" in r.stdout
    for derived in ("--batch-size", "--minibatch-size", "--num-iterations", "--defaults-from"):
        assert derived not in r.stdout, derived


# ---- checkpoints: tensors and plain values, read with weights_only=True ------------------------
class Payload:
    """What a malicious checkpoint carries: unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_before_anything_in_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"script": "mappo.py", "args": {}, "payload": Payload(str(marker))}, tmp_path / "evil.cleanmarl_model")
    r = run(ROOT / "cleanmarl" / "mappo.py", "--checkpoint", str(tmp_path / "evil.cleanmarl_model"), "--eval-only",
            cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "holds more than tensors and plain values, so it is not loaded" in r.stderr
    assert not marker.exists()


def test_a_checkpoint_is_tensors_and_plain_values_and_finished_runs_are_not_resumed(tmp_path):
    mappo = ROOT / "cleanmarl" / "mappo.py"
    r = run(mappo, "--total-timesteps", "800", "--save-model", "--eval-episodes", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = only_run_dir(tmp_path) / "mappo.cleanmarl_model"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["iteration"] == 2 and isinstance(saved["rng"]["numpy_key"], torch.Tensor)
    r = run(mappo, "--checkpoint", str(ckpt), cwd=tmp_path)  # resuming a finished run would re-save and re-evaluate
    assert r.returncode == 2 and "is a finished run (800 steps): evaluate it with --eval-only" in r.stderr
    r = run(mappo, "--checkpoint", str(ckpt), "--eval-only", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_silent_no_ops_say_so(tmp_path):
    mappo = ROOT / "cleanmarl" / "mappo.py"
    r = run(mappo, "--env-id", "vmas:give_way", "--capture-video", cwd=tmp_path)
    assert r.returncode == 2 and "none is scheduled: add --eval-interval N or --save-model" in r.stderr
    r = run(mappo, "--total-timesteps", "700", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: --total-timesteps 700 is not a whole number of rollouts of 400 steps: the run takes 400" in r.stderr
    assert "step 400/400" in r.stdout


def test_the_first_progress_line_before_any_episode_ended_says_so(tmp_path):
    r = run(ROOT / "cleanmarl" / "mappo.py", "--env-id", "vmas:give_way,max_steps=50", "--num-envs", "2",
            "--num-steps", "10", "--num-minibatches", "1", "--total-timesteps", "20", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "episodic_return=- (no episode has ended yet)" in r.stdout and "nan" not in r.stdout


# ---- the two pinned steps ------------------------------------------------------------------------
def run_in_process(script, monkeypatch, tmp_path, argv, wrap):
    """Run a script's main() here with some of its functions wrapped (to observe the loop)."""
    m = importlib.import_module(f"cleanmarl.{script}")
    for name, wrapper in wrap.items():
        monkeypatch.setattr(m, name, wrapper(getattr(m, name)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    m.main()


@pytest.mark.parametrize("script", SCRIPTS)
def test_truncated_episodes_are_bootstrapped_from_the_final_state(script, monkeypatch, tmp_path):
    """The rewards GAE sees differ from the env's exactly where an episode was truncated (by
    gamma V(final state), V a fresh critic's nonzero value), and nowhere else."""
    env_id = ("mpe:encircle-4,max_steps=4" if script == "ilvf_ppo" else "vmas:navigation,max_steps=4")
    seen = {"env": [], "gae": []}

    def wrap_make_env(make_env):
        def wrapped(*a, **k):
            env = make_env(*a, **k)
            step = env.step

            def recorded(action):
                out = step(action)
                reward = out.agent_reward if script == "ilvf_ppo" else out.reward
                seen["env"].append((reward.clone(), out.truncated.clone()))
                return out
            env.step = recorded
            return env
        return wrapped

    def wrap_gae(gae):
        def wrapped(rewards, *a):
            seen["gae"].append(rewards.clone())
            return gae(rewards, *a)
        return wrapped

    flags = ["--env-id", env_id, "--num-envs", "2", "--num-steps", "6", "--total-timesteps", "12",
             "--num-minibatches", "1", "--update-epochs", "1"]
    if script.startswith("cora"):
        flags += ["--q-epochs", "1", "--mc-samples", "2"]
    if script == "rmappo":
        flags += ["--chunk-length", "6"]
    run_in_process(script, monkeypatch, tmp_path, flags, {"make_env": wrap_make_env, "compute_gae": wrap_gae})
    env_reward = torch.stack([r for r, _ in seen["env"]])  # [T, E(, n)]
    truncated = torch.stack([t for _, t in seen["env"]])  # [T, E]
    if env_reward.dim() == 3:
        truncated = truncated.unsqueeze(-1).expand_as(env_reward)
    gae_reward = seen["gae"][0]
    assert truncated.any() and (~truncated).any()
    assert torch.equal(gae_reward[~truncated], env_reward[~truncated])
    assert (gae_reward[truncated] != env_reward[truncated]).all()


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "happo" in s])
def test_happo_draws_a_fresh_agent_order_at_every_update(script, monkeypatch, tmp_path):
    orders = []

    def wrap(update):
        def wrapped(actors, optimizers, perm, *a, **k):
            orders.append(list(perm))
            return update(actors, optimizers, perm, *a, **k)
        return wrapped

    continuous = script.endswith("continuous")
    flags = ["--env-id", "diff:5agents" if continuous else "matrix:team", "--num-envs", "2", "--num-steps", "10",
             "--total-timesteps", "200", "--update-epochs", "1"]
    if script.startswith("cora"):
        flags += ["--q-epochs", "1", "--mc-samples", "2"]
    run_in_process(script, monkeypatch, tmp_path, flags, {"sequential_actor_update": wrap})
    n = len(orders[0])
    assert len(orders) == 10 and all(sorted(o) == list(range(n)) for o in orders)
    assert len({tuple(o) for o in orders}) > 2  # 10 draws of n >= 3 agents' orders: not one fixed order


def test_pyproject_makes_the_env_layer_importable_from_a_fork_anywhere():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'name = "cleanmarl"' in text and "cleanmarl.envs" in text
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e ." in readme


def test_eval_json_of_a_finished_run_keeps_its_fields(tmp_path):
    r = run(ROOT / "cleanmarl" / "ilvf_ppo.py", "--env-id", "mpe:encircle-4,max_steps=10", "--num-envs", "2",
            "--num-steps", "10", "--total-timesteps", "20", "--save-model", "--eval-episodes", "2", "--no-heatmaps",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((only_run_dir(tmp_path) / "eval.json").read_text())
    assert summary["influence_steps"] == [2, 5, 9] and len(summary["influence"]) == 3
    assert os.path.exists(only_run_dir(tmp_path) / "ilvf_ppo.cleanmarl_model")
