"""benchmark.sh: every group lists its commands, their flags exist, and a Slurm array task runs."""

import ast
import glob
import json
import os
import re
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = ["matrix", "diff", "diff_coalitions", "vmas", "give_way", "mamujoco", "smac", "smax", "grf",
          "encircle", "pcp", "cacc", "atsc", "ilvf_ablation", "parity"]


def bench(*args, check=True):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmark.sh"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def script_flags(script):
    """The `--flags` an existing script's Args accepts (booleans also as --no-...)."""
    tree = ast.parse(open(os.path.join(ROOT, "cleanmarl", script)).read())
    args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Args")
    names = [s.target.id.replace("_", "-") for s in args.body if isinstance(s, ast.AnnAssign)]
    return {f"--{n}" for n in names} | {f"--no-{n}" for n in names}


def test_list_names_every_group():
    out = bench("--list").stdout
    for group in ["speed"] + GROUPS:
        assert re.search(rf"^{group}\s", out, re.M), group


@pytest.mark.parametrize("group", GROUPS)
def test_dry_run_lists_valid_commands(group):
    lines = bench(group, "--dry-run", "--seeds", "1,2", "--steps-scale", "0.5").stdout.splitlines()
    assert lines and len(lines) % 2 == 0
    for line in lines:
        words = line.split()
        if words[1].endswith("docs/parity_benchmarl.py"):  # a peer's run (parity), with its own flags
            assert os.path.exists(words[1]) and ("--seed 1 " in line or "--seed 2 " in line), line
            continue
        assert words[:2][0] == "python" and words[1].startswith("cleanmarl/"), line
        assert "--threads 1" in line and ("--seed 1 " in line or "--seed 2 " in line)
        steps = int(words[words.index("--total-timesteps") + 1])
        assert steps > 0
        script = words[1].split("/")[1]
        assert os.path.exists(os.path.join(ROOT, "cleanmarl", script)), f"{group} runs {script}, which does not exist"
        unknown = {w for w in words if w.startswith("--")} - script_flags(script)
        assert not unknown, f"{script} has no flags {unknown}"


def test_table_v_settings_reach_the_commands():
    lines = bench("matrix", "--dry-run", "--seeds", "1").stdout.splitlines()
    assert len(lines) == 4 * 8  # MTG + Multi-Peak 5/10/15; eight arms
    assert all("--learning-rate 5e-4 --critic-learning-rate 5e-3 --clip-coef 0.3 --ent-coef 1e-3 --num-envs 4" in l
               for l in lines)
    assert sum("--critic mc --mc-samples 16" in l for l in lines) == 4 * 3  # CORA-MC, w/o std, CORA-HAPPO
    assert sum("--core-reg 0 " in l for l in lines) == 4
    # MAPPO both ways: its default shared actor and an actor per agent, so no comparison is won by the arrangement
    assert sum(l.startswith("python cleanmarl/mappo.py ") for l in lines) == 2 * 4
    assert sum("--no-share-actor --exp-name mappo_peragent" in l for l in lines) == 4
    half = bench("matrix", "--dry-run", "--seeds", "7", "--steps-scale", "0.5").stdout
    assert "--seed 7 --total-timesteps 50000 " in half
    # the groups pin the full batch their results were measured with (the scripts' VMAS/SMAC rows take 4)
    vmas = bench("give_way", "--dry-run", "--seeds", "1").stdout.splitlines()
    assert vmas and all("--num-envs 16 --num-minibatches 1" in l for l in vmas)
    ilvf = bench("cacc", "--dry-run", "--seeds", "1").stdout
    assert ilvf.count("--update-epochs 15 --clip-coef 0.2 --ent-coef 0.01 --learning-rate 8e-5") == 2 * 5  # mappo + 4 ILVF arms
    assert ilvf.count("--influence oracle --exp-name ilvf_ppo_oracle") == 2


def test_parity_runs_our_defaults_and_leaves_out_a_missing_peer():
    ours = [l for l in bench("parity", "--dry-run", "--seeds", "1").stdout.splitlines() if "cleanmarl/" in l]
    assert len(ours) == 8 and not any("--learning-rate" in l or "--num-envs" in l for l in ours)  # family rows
    assert sum("--num-minibatches 1 --exp-name mappo_" in l for l in ours) == 3  # and the full batch, per task
    assert sum("smax" in l and "rmappo.py" in l and "--exp-name mappo_gru" in l for l in ours) == 2  # the GRU arm per map
    env = dict(os.environ, BENCHMARL_PYTHON="/nonexistent/python")
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmark.sh"), "parity", "--dry-run", "--seeds", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert proc.returncode == 0 and "parity_benchmarl" not in proc.stdout
    assert "BenchMARL is not installed" in proc.stderr and "requirements-bench.txt" in proc.stderr


def test_bad_input_is_one_clear_line():
    for args, message in ((["nope"], "unknown group 'nope'"), (["matrix", "--seeds", "x"], "--seeds"),
                          (["matrix", "--jobs", "0"], "--jobs"), (["matrix", "--steps-scale", "-2"], "--steps-scale"),
                          (["matrix", "--frobnicate"], "unknown option")):
        proc = bench(*args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_slurm_array_task_runs_one_command(tmp_path):
    """--slurm writes the array script; running it as Slurm would (task id set) trains one tiny run."""
    out = bench("matrix", "--slurm", "--seeds", "1", "--steps-scale", "0.004", "--only", "cleanmarl/mappo.py --env-id matrix:team .*--num-envs 4 --save-model",
                "--results", str(tmp_path)).stdout
    group_dir = tmp_path / "matrix"
    script = group_dir / "array_task.sh"
    assert f"sbatch {script}" in out
    text = script.read_text()
    assert "#SBATCH --array=1-1" in text and "SLURM_ARRAY_TASK_ID" in text
    assert (group_dir / "commands.txt").read_text().count("\n") == 1
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1")
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (group_dir / "logs" / "task-1.log").read_text()
    evals = glob.glob(str(group_dir / "runs" / "matrix:team__mappo__1__*" / "eval.json"))
    assert len(evals) == 1 and "eval_return_mean" in json.load(open(evals[0]))
    assert "exit 0" in (group_dir / "logs" / "status.txt").read_text()
    # a task id beyond the command file fails with its own message
    env["SLURM_ARRAY_TASK_ID"] = "2"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no command on line 2" in proc.stderr


def test_local_workers_run_a_group(tmp_path):
    """Two local workers run two tiny commands; the plots script reads what they wrote."""
    out = bench("matrix", "--seeds", "1,2", "--jobs", "2", "--steps-scale", "0.004",
                "--only", "cleanmarl/mappo.py --env-id matrix:team .*--num-envs 4 --save-model", "--results", str(tmp_path)).stdout
    assert "2 commands on 2 local worker(s)" in out and "failed" not in out
    status = (tmp_path / "matrix" / "logs" / "status.txt").read_text()
    assert status.count("exit 0") == 2
    assert len(glob.glob(str(tmp_path / "matrix" / "runs" / "matrix:team__mappo__*" / "eval.json"))) == 2


def test_slurm_task_stopped_by_sigterm_is_requeued_and_resumes(tmp_path):
    """A task that gets SIGTERM (preemption, or --signal's warning before the time limit) saves a
    checkpoint, asks Slurm to requeue it (a fake `scontrol` records the call), and its next run
    resumes from that checkpoint to the end of the run."""
    bench("matrix", "--slurm", "--seeds", "1", "--steps-scale", "0.2", "--only",
          "cleanmarl/mappo.py --env-id matrix:team .*--num-envs 4 --save-model", "--results", str(tmp_path))
    group_dir = tmp_path / "matrix"
    text = (group_dir / "array_task.sh").read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:TERM@120" in text
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.txt\n')
    (fake_bin / "scontrol").chmod(0o755)
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1", SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="76",
               PATH=f"{fake_bin}:{os.environ['PATH']}")
    log = group_dir / "logs" / "task-1.log"
    task = subprocess.Popen(["bash", str(group_dir / "array_task.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):  # until training has logged its first iteration
            if log.exists() and "\niter 1/" in log.read_text():
                break
            time.sleep(0.25)
        task.send_signal(signal.SIGTERM)
        task.communicate(timeout=120)
    finally:
        task.kill()
    assert task.returncode == 143, log.read_text()
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "76_1"]
    assert "interrupted (SIGTERM)" in log.read_text()
    proc = subprocess.run(["bash", str(group_dir / "array_task.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, log.read_text()
    status = (group_dir / "logs" / "status.txt").read_text().splitlines()
    assert status[0].startswith("task 1 exit 143") and status[1] == "task 1 requeued"
    assert status[2].startswith("task 1 exit 0") and "--checkpoint runs/matrix:team__mappo__1__" in status[2]
    (run_dir,) = (group_dir / "runs").iterdir()
    assert json.loads((run_dir / "eval.json").read_text())["global_step"] == 20000


def test_task_does_not_resume_another_commands_checkpoint(tmp_path):
    """Line i of commands.txt changes when a group is run again with other --seeds or --only into the
    same results folder: task i then starts afresh (the old log kept aside), never resuming the
    checkpoint the other command left in logs/task-i.log."""
    bench("matrix", "--slurm", "--seeds", "2", "--steps-scale", "0.02", "--only",
          "cleanmarl/mappo.py --env-id matrix:team .*--num-envs 4 --save-model", "--results", str(tmp_path))
    group_dir = tmp_path / "matrix"
    (group_dir / "logs").mkdir(exist_ok=True)
    stale = group_dir / "other.cleanmarl_model"
    stale.write_text("not a checkpoint")
    log = group_dir / "logs" / "task-1.log"
    log.write_text(f"python cleanmarl/mappo.py --env-id matrix:team --seed 1\nmodel saved to {stale}\n")
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="1")
    proc = subprocess.run(["bash", str(group_dir / "array_task.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, log.read_text()
    assert "--checkpoint" not in log.read_text() and "--seed 2" in log.read_text().splitlines()[0]
    (old,) = [p for p in (group_dir / "logs").iterdir() if re.fullmatch(r"task-1\.\d+\.log", p.name)]
    assert "--seed 1" in old.read_text()
