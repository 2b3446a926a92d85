"""A run's whole life, in every script: flags checked before anything starts, a SIGTERM that
keeps a checkpoint, an exact resume from it, greedy evaluation of a checkpoint and during
training, and videos."""

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from cleanmarl.envs import EnvError, make_env
from tests.test_envs import needs_mujoco
from tests.test_scripts import only_run_dir, run, scalars

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "cleanmarl").glob("*.py") if p.stem != "__init__")
RUNTIME = {"batch_size", "minibatch_size", "num_iterations"}  # filled in by the script, never set
# the env each script is resumed on: episodes end at rollout boundaries (10-step matrix game,
# one-step differential game), so a resumed run's fresh reset is where the straight run stands
ENV = {s: "diff:2agents" if s.endswith("continuous") else "matrix:team" for s in SCRIPTS}
FAST = {s: ["--q-epochs", "2", "--mc-samples", "2"] if s.startswith("cora") else [] for s in SCRIPTS}


def module(script):
    return importlib.import_module(f"cleanmarl.{script}")


def numeric_fields(args_cls):
    hints = typing.get_type_hints(args_cls)
    return [f.name for f in dataclasses.fields(args_cls) if f.name not in RUNTIME
            and typing.Optional[hints[f.name]] in (typing.Optional[int], typing.Optional[float])
            and hints[f.name] is not bool]


def out_of_range(rule):
    """Values that break a FLAG_RANGES rule: below its lower bound, above its upper one, NaN."""
    op, bound = rule.split(" ", 1)
    if op == "in":
        low, high = (float(x) for x in bound[1:-1].split(","))
        bad = [low - 1, high + 1] + ([low, high] if bound[0] == "(" else [])
    else:
        bad = [float(bound) - 1] + ([float(bound)] if op == ">" else [])
    return bad + [float("nan")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_has_a_range_and_is_checked(script, capsys):
    m = module(script)
    fields = numeric_fields(m.Args)
    assert sorted(fields) == sorted(m.FLAG_RANGES), "every numeric flag needs a range in FLAG_RANGES"
    m.check_args(m.Args(), m.FLAG_RANGES)  # the defaults pass
    for name, rule in m.FLAG_RANGES.items():
        default = getattr(m.Args(), name)
        for value in out_of_range(rule):
            if isinstance(default, int):
                if value != value:
                    continue  # integer flags cannot be NaN
                value = int(value)
            args = m.Args(**{name: value})
            with pytest.raises(SystemExit) as exit_info:
                m.check_args(args, m.FLAG_RANGES)
            assert exit_info.value.code == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(f"error: --{name.replace('_', '-')} must be {rule}, got")


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_flags_end_in_one_line_from_the_command_line(script, tmp_path):
    for flags in (["--num-envs", "0"], ["--learning-rate", "-1"], ["--gamma", "1.5"]):
        r = run(ROOT / "cleanmarl" / f"{script}.py", *flags, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (flags, r.stderr)
    r = run(ROOT / "cleanmarl" / f"{script}.py", "--eval-only", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "error: --eval-only needs --checkpoint PATH (a checkpoint this script wrote)\n"
    assert not (tmp_path / "runs").exists()


def _family_installed(family):
    try:
        make_env({"mamujoco": "mamujoco:Hopper-3x1", "smax": "smax:3m"}[family], 1)
        return True
    except EnvError:
        return False


# every family's options with a wrong type and out of range (the families installed here)
BAD_OPTIONS = [
    "matrix:penalty,k=abc", "matrix:penalty,k=5", "matrix:team,k=1",
    "vmas:navigation,n_agents=abc", "vmas:navigation,n_agents=-1", "vmas:navigation,n_agents=2.5",
    "vmas:navigation,max_steps=0", "vmas:navigation,max_steps=x", "vmas:navigation,foo=3",
    "vmas:navigation,agent_radius=abc",
    "mpe:encircle-8,max_steps=abc", "mpe:encircle-8,max_steps=0", "mpe:encircle-8,obstacles=-1", "mpe:encircle-8,x=1",
    "cacc:catchup,eval=2", "cacc:catchup,scale=abc", "cacc:catchup,max_steps=0", "cacc:catchup,max_steps=x",
    "pcp:,dim=abc", "pcp:,dim=1", "pcp:,vision=-1", "pcp:,max_steps=0",
    "coupled:ring,k=1", "diff:2agents,k=1",
    "mamujoco:Hopper-3x1,agent_obsk=abc", "mamujoco:Hopper-3x1,agent_obsk=-1",
    "mamujoco:Hopper-3x1,max_steps=0", "mamujoco:Hopper-3x1,max_steps=5000", "mamujoco:Hopper-3x1,foo=1",
    "smax:3m,max_steps=abc", "smax:3m,max_steps=1", "smax:3m,foo=1",
]


@pytest.mark.parametrize("env_id", BAD_OPTIONS)
def test_every_family_option_is_typed_and_ranged(env_id):
    family = env_id.partition(":")[0]
    if family in ("mamujoco", "smax") and not _family_installed(family):
        pytest.skip(f"{family} is not installed (requirements-{'mujoco' if family == 'mamujoco' else family}.txt)")
    with pytest.raises(EnvError) as info:
        make_env(env_id, 2, 0, "cpu", "continuous" if family in ("diff", "mamujoco") else "discrete")
    assert "\n" not in str(info.value) and env_id.split(",")[0].split(":")[0] in str(info.value)


def _start(script, flags, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "cleanmarl" / f"{script}.py"), *flags], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _skip_header(proc):
    """The first stdout line after the run folder and hyperparameter lines every run starts with."""
    line = proc.stdout.readline()
    while line.startswith(("run: ", "hyperparameters")):
        line = proc.stdout.readline()
    return line


def _weights(path):
    return torch.load(path, weights_only=True)["models"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_sigterm_keeps_a_checkpoint_and_resuming_it_is_exact(script, tmp_path):
    """Straight run of 2N steps vs the same run stopped by SIGTERM after its first iteration and
    resumed from its checkpoint: the same final weights, bit for bit, learning rates annealed."""
    flags = ["--env-id", ENV[script], "--total-timesteps", "8000", "--num-envs", "4", "--num-steps", "20",
             "--save-model", "--eval-episodes", "2", *FAST[script]]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir(), stopped.mkdir()
    proc = _start(script, flags, stopped)
    try:
        assert _skip_header(proc).startswith("iter 1/")  # training has started
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted (SIGTERM)" in err
    run_dir = only_run_dir(stopped)
    ckpt = run_dir / f"{script}.cleanmarl_model"
    saved = torch.load(ckpt, weights_only=True)  # tensors and plain values only
    assert 1 <= saved["iteration"] < 100 and saved["global_step"] == 80 * saved["iteration"]
    assert not (run_dir / "eval.json").exists()  # an interrupted run is not evaluated

    r = run(ROOT / "cleanmarl" / f"{script}.py", "--checkpoint", str(ckpt), cwd=stopped)
    assert r.returncode == 0, r.stderr
    assert only_run_dir(stopped) == run_dir  # the same run folder: the curves continue
    r = run(ROOT / "cleanmarl" / f"{script}.py", *flags, cwd=straight)
    assert r.returncode == 0, r.stderr
    a, b = _weights(only_run_dir(straight) / f"{script}.cleanmarl_model"), _weights(ckpt)
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert json.loads((run_dir / "eval.json").read_text())["global_step"] == 8000


def test_checkpoint_evaluation_and_its_errors(tmp_path):
    mappo = ROOT / "cleanmarl" / "mappo.py"
    r = run(mappo, "--env-id", "matrix:penalty", "--total-timesteps", "2000", "--num-steps", "50",
            "--eval-interval", "600", "--save-model", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(tmp_path)
    ckpt = str(run_dir / "mappo.cleanmarl_model")
    trained = json.loads((run_dir / "eval.json").read_text())
    # evaluations every 600 steps (after the rollouts that cross 600, 1200, 1800) and at the end
    assert [s for s, _ in scalars(run_dir, "eval/episodic_return")] == [600, 1200, 1800, 2000]
    (run_dir / "eval.json").unlink()
    torch.save({"actor": {}, "args": {}}, tmp_path / "old.cleanmarl_model")  # the weights-only format of before
    r = run(mappo, "--checkpoint", ckpt, "--eval-only", "--eval-episodes", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "eval.json").read_text()) == trained  # same weights, same greedy returns
    for flags, message in [
        ((ROOT / "cleanmarl" / "happo.py", "--checkpoint", ckpt, "--eval-only"),
         "was written by mappo.py; run it with that script, not happo.py"),
        ((mappo, "--checkpoint", ckpt, "--eval-only", "--env-id", "matrix:climbing"),
         "is a run with --env-id matrix:penalty, not matrix:climbing"),
        ((mappo, "--checkpoint", ckpt, "--hidden-dim", "32"), "is a run with --hidden-dim 64, not 32"),
        ((mappo, "--checkpoint", str(tmp_path / "nothing"), "--eval-only"), "cannot read it"),
        ((mappo, "--checkpoint", str(tmp_path / "old.cleanmarl_model"), "--eval-only"),
         "is not a checkpoint this version of mappo.py can resume or evaluate"),
    ]:
        r = run(*flags, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


@pytest.mark.parametrize("script,env_id", [
    ("mappo", "vmas:navigation,max_steps=8"),
    ("mappo_continuous", "vmas:navigation,max_steps=8"),
    pytest.param("mappo_continuous", "mamujoco:HalfCheetah-6x1,max_steps=8", marks=needs_mujoco),
])
@pytest.mark.filterwarnings("ignore:os.fork")  # reading the mp4 forks ffmpeg in this process, where JAX may run
def test_capture_video_records_the_evaluation_episode(script, env_id, tmp_path):
    import imageio.v2 as imageio  # a core requirement (requirements.txt): its absence is a failure, not a skip

    r = run(ROOT / "cleanmarl" / f"{script}.py", "--env-id", env_id, "--total-timesteps", "64", "--num-envs", "2",
            "--num-steps", "16", "--save-model", "--eval-episodes", "2", "--capture-video", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (video,) = (tmp_path / "videos" / only_run_dir(tmp_path).name).iterdir()
    assert video.name == "eval_64.mp4"
    frames = imageio.mimread(video)
    assert len(frames) == 8 and frames[0].ndim == 3 and frames[0].std() > 0  # reset + 7 steps, not blank


def test_capture_video_on_a_family_that_cannot_render_is_one_line(tmp_path):
    r = run(ROOT / "cleanmarl" / "mappo.py", "--capture-video", "--save-model", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == "error: --capture-video: matrix:team cannot render videos (vmas:, mamujoco: and smax: can)\n"


# CORA Table V, typed from the paper: actor lr, critic lr, clip, entropy coefficient, MC samples K,
# parallel envs (epochs: 10 in every row)
TABLE_V = {
    "matrix": (5e-4, 5e-3, 0.3, 1e-3, 16, 4), "diff": (5e-5, 5e-4, 0.2, 1e-4, 16, 4),
    "mamujoco": (5e-4, 5e-3, 0.2, 1e-4, 64, 4), "vmas:navigation": (5e-4, 5e-3, 0.2, 1e-4, 16, 64),
    "vmas": (5e-4, 5e-3, 0.2, 1e-4, 16, 16), "smac": (5e-4, 5e-4, 0.2, 1e-3, 64, 20),
    "grf": (5e-4, 5e-4, 0.2, 1e-3, 64, 50),
}


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "ilvf_ppo"])
def test_family_defaults_are_the_papers_rows_and_given_flags_win(script):
    m = module(script)
    for key, (source, values) in m.FAMILY_DEFAULTS.items():
        row = dict(zip(m.FAMILY_COLUMNS, values))
        assert len(values) == len(m.FAMILY_COLUMNS) and set(row) <= set(vars(m.Args()))
        paper = TABLE_V.get(key, TABLE_V.get("smac") if key in ("smacv2", "smax") else None)
        if paper is None:  # the reward-sum families: ILVF Table 1
            assert source == "ILVF Table 1" and row == dict(learning_rate=8e-5, critic_learning_rate=8e-5, clip_coef=0.2,
                                                             ent_coef=1e-2, num_envs=4, update_epochs=15,
                                                             num_minibatches=1, activation="relu", feature_norm=True,
                                                             layer_norm=True)  # and on-policy's MLP
            continue
        lr, critic_lr, clip, ent, k, envs = paper
        assert source.startswith("CORA Table V")
        assert (row["learning_rate"], row["critic_learning_rate"], row["clip_coef"], row["ent_coef"], row["num_envs"],
                row["update_epochs"]) == (lr, critic_lr, clip, ent, envs, 10), key
        assert (row.get("activation", "tanh"), row.get("feature_norm", False), row.get("layer_norm", False)) == (
            "tanh", False, False), key  # Table V leaves the network open: the scripts' own
        if "mc_samples" in row:
            assert row["mc_samples"] == k
        # minibatches, left open by the table: 4 on the rows of 16 or more envs (docs/parity.md), else 1
        assert row["num_minibatches"] == (4 if envs >= 16 else 1), key
    # Args' own defaults are the row of the script's main family
    main = "diff" if script.endswith("continuous") else "matrix"
    assert dict(zip(m.FAMILY_COLUMNS, m.FAMILY_DEFAULTS[main][1])) == {c: getattr(m.Args(), c) for c in m.FAMILY_COLUMNS}
    args = m.Args(env_id="vmas:navigation,n_agents=3", ent_coef=0.05)
    given = m.flags_given(["--env-id", "vmas:navigation,n_agents=3", "--ent-coef", "0.05", "--num-envs=8", "--no-anneal-lr"])
    assert given == {"env_id", "ent_coef", "num_envs", "no_anneal_lr", "anneal_lr"}
    args.num_envs = 8
    table = m.FAMILY_COLUMNS, m.FAMILY_DEFAULTS
    assert m.apply_family_defaults(args, *table, given) == "CORA Table V: VMAS (Navigation)"
    assert (args.learning_rate, args.critic_learning_rate, args.clip_coef) == (5e-4, 5e-3, 0.2)
    assert (args.ent_coef, args.num_envs) == (0.05, 8)  # set on the command line: kept
    args = m.Args(env_id="vmas:give_way")
    assert m.apply_family_defaults(args, *table, {"env_id"}) == "CORA Table V: VMAS (others)" and args.num_envs == 16
    assert m.apply_family_defaults(m.Args(env_id="nofamily:x"), *table, set()) == "Args"


def test_a_rows_minibatches_that_do_not_divide_the_batch_are_one_line(tmp_path):
    # the VMAS (others) row's 4 minibatches against the 3 envs x 5 steps the user chose
    r = run(ROOT / "cleanmarl" / "mappo.py", "--env-id", "vmas:give_way", "--num-envs", "3", "--num-steps", "5",
            cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == "error: --num-minibatches (4) must divide num_envs*num_steps (15): set one that does\n"


def test_the_run_prints_and_records_its_row(tmp_path):
    r = run(ROOT / "cleanmarl" / "mappo.py", "--env-id", "vmas:give_way,max_steps=10", "--total-timesteps", "320",
            "--num-steps", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("run: runs/vmas:give_way,max_steps=10__mappo__1__")
    assert "\nhyperparameters (CORA Table V: VMAS (others) for the flags not given): learning_rate=0.0005 " in r.stdout
    assert " num_envs=16 update_epochs=10 num_minibatches=4 activation=tanh " in r.stdout  # the row's, not Args' 
    assert "iter 1/2 step 160/320" in r.stdout  # 16 envs x 10 steps: the row's parallel envs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(only_run_dir(tmp_path)), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|defaults_from|CORA Table V: VMAS (others)|" in text and "|num_envs|16|" in text
    assert "|num_minibatches|4|" in text and "|minibatch_size|40|" in text


def test_capture_video_without_its_packages_is_one_line(tmp_path):
    """imageio-ffmpeg missing (a None entry in sys.modules makes the import machinery report it
    absent): the run stops before training with the install line."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['imageio_ffmpeg'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, str(ROOT / "cleanmarl" / "mappo.py"), "--env-id", "vmas:give_way",
                        "--capture-video", "--save-model"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == ("error: --capture-video needs imageio and imageio-ffmpeg: "
                        "pip install imageio==2.38.1 imageio-ffmpeg==0.6.0\n")
    assert not (tmp_path / "runs").exists()
