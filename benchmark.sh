#!/usr/bin/env bash
# Speed benchmarks: prints steps per second (env steps summed over parallel envs), one thread.
# Usage: bash benchmark.sh            (about 2 minutes on a 2-core CPU)
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

train() {  # script, env id, num envs
  python "cleanmarl/$1" --env-id "$2" --num-envs "$3" --total-timesteps "$STEPS" --threads 1 2>&1 \
    | grep -o 'SPS=[0-9]*' | tail -1 | cut -d= -f2
}

for n in 3 4; do
  id="vmas:navigation,n_agents=$n"
  printf '%-56s %10s\n' "env only, random actions: $id, 64 envs" "$(env_only "$id" discrete 64)"
  printf '%-56s %10s\n' "mappo.py $id, 64 envs" "$(train mappo.py "$id" 64)"
done
printf '%-56s %10s\n' "mappo_continuous.py vmas:navigation, 64 envs" "$(train mappo_continuous.py vmas:navigation 64)"
printf '%-56s %10s\n' "mappo.py matrix:team, 4 envs" "$(train mappo.py matrix:team 4)"
printf '%-56s %10s\n' "mappo_continuous.py diff:2agents, 4 envs" "$(train mappo_continuous.py diff:2agents 4)"
