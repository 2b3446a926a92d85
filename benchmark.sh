#!/usr/bin/env bash
# Speed benchmarks: prints steps per second (env steps summed over parallel envs), one thread.
# Usage: bash benchmark.sh            (about 8 minutes on a 2-core CPU, most of it CORA at n = 8)
#        STEPS=128000 bash benchmark.sh
# Each training figure is the SPS a script reports at the end of its run (whole loop: rollout,
# GAE and 10 full-batch PPO epochs); "env only" steps the same env with random actions.
# Speed on a shared machine varies: note other processes' CPU use (printed first) with the figures.
set -euo pipefail
cd "$(dirname "$0")"
STEPS=${STEPS:-64000}
export PYTHONUNBUFFERED=1
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)   cores: $(nproc)   total steps per run: $STEPS"
printf '%-56s %10s\n' "benchmark" "SPS"

env_only() {  # env id, action type, num envs
  python - "$@" <<'EOF'
import sys, time, torch
from cleanmarl.envs import make_env
torch.set_num_threads(1)
env_id, action_type, E = sys.argv[1], sys.argv[2], int(sys.argv[3])
env = make_env(env_id, E, 0, "cpu", action_type)
spec = env.spec
env.reset()
def act():
    if spec.discrete:
        return torch.randint(0, spec.n_actions, (E, spec.n_agents))
    return torch.empty(E, spec.n_agents, spec.action_dim).uniform_(spec.action_low, spec.action_high)
for _ in range(20):
    env.step(act())
n, start = 300, time.time()
for _ in range(n):
    env.step(act())
print(int(n * E / (time.time() - start)))
EOF
}

train() {  # script, env id, num envs (STEPS steps)
  python "cleanmarl/$1" --env-id "$2" --num-envs "$3" --total-timesteps "$STEPS" --threads 1 2>&1 \
    | grep -o 'SPS=[0-9]*' | tail -1 | cut -d= -f2
}

for n in 3 4; do
  id="vmas:navigation,n_agents=$n"
  printf '%-56s %10s\n' "env only, random actions: $id, 64 envs" "$(env_only "$id" discrete 64)"
  printf '%-56s %10s\n' "mappo.py $id, 64 envs" "$(train mappo.py "$id" 64)"
done
for script in mappo_continuous.py optimistic_mappo.py happo.py happo_continuous.py; do
  printf '%-56s %10s\n' "$script vmas:navigation, 64 envs" "$(train "$script" vmas:navigation 64)"
done
printf '%-56s %10s\n' "mappo.py matrix:team, 4 envs" "$(train mappo.py matrix:team 4)"
printf '%-56s %10s\n' "mappo_continuous.py diff:2agents, 4 envs" "$(train mappo_continuous.py diff:2agents 4)"

# ---- CORA: the core QP and the price of credit assignment ---------------------------------------
# core_allocation on 6400 samples, n = 8, 127 sampled coalitions, against per-sample DAQP and OSQP
# loops (needs requirements-dev.txt), then CORA-MAPPO's SPS relative to MAPPO's on the same env.
echo
python - <<'EOF' 2>/dev/null || echo "(core QP timing skipped: pip install -r requirements-dev.txt)"
import time, numpy as np, torch, daqp
from cleanmarl.cora_mappo import core_allocation, core_allocation_osqp, sample_coalitions
torch.set_num_threads(1)
n, B, reg = 8, 6400, 1e-2
gen = torch.Generator().manual_seed(0)
C = sample_coalitions(n, 2 ** (n - 1) - 1, gen)
m = len(C)
v, AN = torch.randn(B, m, generator=gen, dtype=torch.float64) * 3, torch.randn(B, generator=gen, dtype=torch.float64) * 3
core_allocation(C, v[:64], AN[:64], reg)
start = time.perf_counter(); alloc, _ = core_allocation(C, v, AN, reg); t_ipm = time.perf_counter() - start
H = np.diag(np.r_[np.full(n, 2 * reg), 0.0])
A = np.r_[np.r_[np.ones(n), 0.0][None], np.c_[C.double().numpy(), np.ones(m)], np.r_[np.zeros(n), 1.0][None]]
sense = np.zeros(m + 2, dtype=np.int32); sense[0] = 5
start, err = time.perf_counter(), 0.0
for b in range(B):
    f = np.r_[np.full(n, -2 * reg * AN[b].item() / n), 1.0]
    x = daqp.solve(H, f, A, np.r_[AN[b].item(), np.full(m + 1, 1e30)], np.r_[AN[b].item(), v[b].numpy(), 0.0], sense)[0]
    err = max(err, float(np.abs(x[:n] - alloc[b].numpy()).max()))
t_daqp = time.perf_counter() - start
k = 400
start = time.perf_counter(); core_allocation_osqp(C, v[:k], AN[:k], reg); t_osqp = (time.perf_counter() - start) * B / k
print(f"core QP (Eq. 24), n=8, {m} coalitions, {B} samples: batched {t_ipm*1e3:.0f} ms, DAQP loop {t_daqp*1e3:.0f} ms, "
      f"OSQP loop {t_osqp*1e3:.0f} ms (from {k}); batched vs DAQP max abs diff {err:.1e}")
EOF
CORA_STEPS=${CORA_STEPS:-32000}
printf '%-44s %8s %16s %16s\n' "vmas:navigation, 64 envs, $CORA_STEPS steps" "MAPPO" "CORA quadratic" "CORA MC (K=16)"
for n in 3 5 8; do
  id="vmas:navigation,n_agents=$n"
  base=$(STEPS=$CORA_STEPS train mappo.py "$id" 64)
  qc=$(python cleanmarl/cora_mappo.py --env-id "$id" --num-envs 64 --total-timesteps "$CORA_STEPS" --critic quadratic 2>&1 | grep -o 'SPS=[0-9]*' | tail -1 | cut -d= -f2)
  mc=$(python cleanmarl/cora_mappo.py --env-id "$id" --num-envs 64 --total-timesteps "$CORA_STEPS" --critic mc 2>&1 | grep -o 'SPS=[0-9]*' | tail -1 | cut -d= -f2)
  printf '%-44s %8s %9s (%.2fx) %9s (%.2fx)\n' "n = $n agents" "$base" "$qc" "$(python -c "print($qc/$base)")" "$mc" "$(python -c "print($mc/$base)")"
done

# ---- head-to-head with BenchMARL's MAPPO (TorchRL), when installed ----------------------------
# Same task settings (BenchMARL's navigation config: 3 agents, shared_rew=False, 100 steps), 64
# envs x 100 steps per batch, 10 full-batch epochs, 64x64 tanh MLPs, one thread; runs alternate.
BENCHMARL_PYTHON=${BENCHMARL_PYTHON:-python}
if ! "$BENCHMARL_PYTHON" -c "import benchmarl" 2>/dev/null; then
  echo "(head-to-head skipped: BenchMARL not installed; see requirements-bench.txt)"
  exit 0
fi
benchmarl_sps() {  # discrete|continuous
  "$BENCHMARL_PYTHON" - "$1" "$STEPS" 2>/dev/null <<'EOF' | grep -o 'SPS=[0-9]*' | cut -d= -f2
import sys, tempfile, time, torch
torch.set_num_threads(1)
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import VmasTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.models.mlp import MlpConfig
frames = int(sys.argv[2])
cfg = ExperimentConfig.get_from_yaml()
cfg.prefer_continuous_actions = sys.argv[1] == "continuous"
cfg.on_policy_collected_frames_per_batch, cfg.on_policy_n_envs_per_worker = 6400, 64
cfg.on_policy_n_minibatch_iters, cfg.on_policy_minibatch_size = 10, 6400
cfg.max_n_frames, cfg.evaluation, cfg.render, cfg.loggers = frames, False, False, []
cfg.create_json, cfg.checkpoint_at_end, cfg.save_folder = False, False, tempfile.mkdtemp()
mlp = MlpConfig(num_cells=[64, 64], layer_class=torch.nn.Linear, activation_class=torch.nn.Tanh)
experiment = Experiment(task=VmasTask.NAVIGATION.get_from_yaml(), algorithm_config=MappoConfig.get_from_yaml(),
                        model_config=mlp, critic_model_config=mlp, seed=0, config=cfg)
start = time.time()
experiment.run()
print(f"SPS={int(frames / (time.time() - start))}")
EOF
}
id="vmas:navigation,n_agents=3,shared_rew=False"
echo
echo "head-to-head on $id, 64 envs (SPS; ratio = cleanmarl / BenchMARL)"
printf '%-6s %-11s %10s %10s %7s\n' round actions cleanmarl BenchMARL ratio
for round in $(seq "${ROUNDS:-2}"); do
  for kind in discrete continuous; do
    script=mappo.py; [ "$kind" = continuous ] && script=mappo_continuous.py
    ours=$(train "$script" "$id" 64)
    theirs=$(benchmarl_sps "$kind")
    printf '%-6s %-11s %10s %10s %7s\n' "$round" "$kind" "$ours" "$theirs" \
      "$(python -c "print(f'{$ours / $theirs:.2f}')")"
  done
done
