#!/usr/bin/env bash
# The papers' experiments and the speed figures, as named groups of commands.
#
#   bash benchmark.sh --list                        the groups, what each runs, and its size
#   bash benchmark.sh GROUP --dry-run               print the group's commands, run nothing
#   bash benchmark.sh GROUP [--seeds 1,2,3] [--jobs N] [--steps-scale X] [--only REGEX] [--results DIR]
#                                                   run them on N local workers (default 1);
#                                                   --only keeps the commands matching REGEX
#   bash benchmark.sh GROUP --slurm [...]           write a Slurm job array instead of running
#   bash benchmark.sh speed                         the speed figures (steps per second)
#   bash benchmark.sh gpu [--only REGEX]            the device check: every script with --cuda
#                                                   (docs/device_check.py; skips without CUDA)
#
# Every experiment command is a plain script call with `--threads 1`, so one worker is one core.
# A run writes into DIR/GROUP/ (default results/GROUP/): commands.txt (one command a line),
# array_task.sh (runs line $SLURM_ARRAY_TASK_ID; the local workers and Slurm both use it),
# logs/task-<i>.log, and the scripts' own runs/<env>__<exp>__<seed>__<time>/ (TensorBoard logs
# and eval.json). Plot with `python docs/plot_results.py DIR/GROUP/runs`.
#
# Hyperparameters: the CORA groups take Table V of the CORA paper (actor and critic learning
# rates, clip, entropy coefficient, MC samples K, parallel envs, runs; gamma 0.99, GAE lambda
# 0.95, 10 epochs and lambda_reg 1e-2 shared), the ILVF groups Table 1 of the ILVF paper. The
# papers give no step budgets in their text, so STEPS below are ours (scaled by --steps-scale).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
export PYTHONUNBUFFERED=1

# ---- experiment groups ------------------------------------------------------------------------
# Each group function prints one command per line for the seeds in $SEEDS; `emit` multiplies a
# (script, env, flags) triple by the seeds and applies the step budget.
SEEDS=""
SCALE=1

emit() {  # steps script env-id [flags...]
  local steps=$1 script=$2 env=$3
  shift 3
  steps=$(awk -v s="$steps" -v x="$SCALE" 'BEGIN { v = int(s * x + 0.5); print (v < 1 ? 1 : v) }')
  local seed
  for seed in ${SEEDS//,/ }; do
    echo "python cleanmarl/$script --env-id $env --seed $seed --total-timesteps $steps $* --save-model --threads 1"
  done
}

emit_spec() {  # steps env-id table-flags "script [flags...]"
  local spec=$4
  # shellcheck disable=SC2046  # the spec's flags split into words
  emit "$1" "${spec%% *}" "$2" "$3" $(echo "$spec" | cut -s -d' ' -f2-)
}

# CORA Table V rows as flags (gamma, GAE lambda, 10 epochs and lambda_reg are the scripts' defaults
# and shared by every row). K (MC samples) is added only for the CORA scripts.
# Table V gives no minibatches: the groups pin the full batch their committed results were measured
# with (the scripts' own VMAS/SMAC/GRF rows take 4 since issue 19, docs/parity.md).
TV_MATRIX="--learning-rate 5e-4 --critic-learning-rate 5e-3 --clip-coef 0.3 --ent-coef 1e-3 --num-envs 4"
TV_DIFF="--learning-rate 5e-5 --critic-learning-rate 5e-4 --clip-coef 0.2 --ent-coef 1e-4 --num-envs 4"
TV_MUJOCO="--learning-rate 5e-4 --critic-learning-rate 5e-3 --clip-coef 0.2 --ent-coef 1e-4 --num-envs 4"
TV_VMAS_NAV="--learning-rate 5e-4 --critic-learning-rate 5e-3 --clip-coef 0.2 --ent-coef 1e-4 --num-envs 64 --num-minibatches 1"
TV_VMAS="--learning-rate 5e-4 --critic-learning-rate 5e-3 --clip-coef 0.2 --ent-coef 1e-4 --num-envs 16 --num-minibatches 1"
TV_SMAC="--learning-rate 5e-4 --critic-learning-rate 5e-4 --clip-coef 0.2 --ent-coef 1e-3 --num-envs 20 --num-minibatches 1"
TV_GRF="--learning-rate 5e-4 --critic-learning-rate 5e-4 --clip-coef 0.2 --ent-coef 1e-3 --num-envs 50 --num-minibatches 1"
CORA_SHARED="--core-reg 1e-2"

# The CORA paper's comparison set (Figs. 2-7): MAPPO, Optimistic MAPPO, HAPPO, CORA-PPO with the
# Monte Carlo critic and with the quadratic critic (CORA-PPO-QC). $1: discrete|continuous, $2: K,
# $3: "both" adds MAPPO with an actor per agent. Actor arrangements: MAPPO and Optimistic MAPPO
# share one actor (their default, the MAPPO paper's); HAPPO and CORA keep an actor per agent
# (HAPPO's design and CORA's Alg. 1 l. 1). Groups given "both" also run MAPPO with an actor per
# agent, so no comparison is won by the arrangement alone.
cora_algorithms() {
  local suffix="" k=$2
  [ "$1" = continuous ] && suffix=_continuous
  echo "mappo$suffix.py"
  [ "${3:-}" = both ] && echo "mappo$suffix.py --no-share-actor --exp-name mappo${suffix}_peragent"
  echo "optimistic_mappo$suffix.py"
  echo "happo$suffix.py"
  echo "cora_mappo$suffix.py --critic mc --mc-samples $k $CORA_SHARED --exp-name cora_mappo${suffix}_mc"
  echo "cora_mappo$suffix.py --critic quadratic $CORA_SHARED --exp-name cora_mappo${suffix}_qc"
  if [ "${3:-}" = both ]; then  # CORA w/o std (Eq. 24's Std term off) and CORA on HAPPO
    echo "cora_mappo$suffix.py --critic mc --mc-samples $k --core-reg 0 --exp-name cora_mappo${suffix}_mc_nostd"
    echo "cora_happo$suffix.py --critic mc --mc-samples $k $CORA_SHARED --exp-name cora_happo${suffix}_mc"
  fi
}

cora_grid() {  # steps action-type K table-flags env-ids... (MAPPO_BOTH=both adds the extra arms)
  local steps=$1 kind=$2 k=$3 flags=$4 env algo
  shift 4
  for env in "$@"; do
    while read -r algo; do
      emit_spec "$steps" "$env" "$flags" "$algo"
    done < <(cora_algorithms "$kind" "$k" "${MAPPO_BOTH:-}")
  done
}

group_matrix() {  # CORA Fig. 2: MTG and Multi-Peak 5/10/15 (3 agents x 5 actions, 10 steps)
  MAPPO_BOTH=both cora_grid 100000 discrete 16 "$TV_MATRIX" matrix:team matrix:peaks5 matrix:peaks10 matrix:peaks15
}
group_diff() {  # CORA Figs. 3 and 8 (left): 2- and 5-agent differential games, with "w/o std"
  MAPPO_BOTH=both cora_grid 200000 continuous 16 "$TV_DIFF" diff:2agents diff:5agents
}
group_diff_coalitions() {  # CORA Fig. 8 (right): coalitions sampled out of 2^5 - 2 = 30
  local m
  for m in 10 15 20 25 30; do
    emit 200000 cora_mappo_continuous.py diff:5agents "$TV_DIFF" --critic mc --mc-samples 16 $CORA_SHARED \
      --num-coalitions "$m" --exp-name "cora_mappo_continuous_mc_m$m"
  done
}
# Issue 27's controls, paired by seed with the paper's CORA (same seeds, same pipeline): the equal
# split of A_N (the credit alone), exact coalition values from the game's reward, and Sec. III-A's
# A_N = min_j Q_j(s, a) - V(s) in place of GAE (with its own equal split).
controls() {  # steps script env table-flags K [extra arms...]
  local steps=$1 script=$2 env=$3 flags=$4 k=$5 base arm
  shift 5
  base="${script%.py}_mc"
  emit "$steps" "$script" "$env" "$flags" --critic mc --mc-samples "$k" $CORA_SHARED --exp-name "$base"
  emit "$steps" "$script" "$env" "$flags" --critic mc --mc-samples "$k" $CORA_SHARED --allocation equal --exp-name "${base}_equal"
  for arm in "$@"; do
    case $arm in
      oracle) emit "$steps" "$script" "$env" "$flags" --critic mc --mc-samples "$k" $CORA_SHARED --coalition-values oracle --exp-name "${base}_oracle" ;;
      q) emit "$steps" "$script" "$env" "$flags" --critic mc --mc-samples "$k" $CORA_SHARED --grand-advantage q --exp-name "${base}_q"
         emit "$steps" "$script" "$env" "$flags" --critic mc --mc-samples "$k" $CORA_SHARED --grand-advantage q --allocation equal --exp-name "${base}_q_equal" ;;
    esac
  done
}
group_matrix_controls() {  # issue 27 on CORA Fig. 2's games (Multi-Peak 5 also with Sec. III-A's A_N)
  controls 100000 cora_mappo.py matrix:peaks5 "$TV_MATRIX" 16 oracle q
  local env
  for env in matrix:peaks10 matrix:peaks15 matrix:team; do controls 100000 cora_mappo.py "$env" "$TV_MATRIX" 16 oracle; done
}
group_diff_controls() {  # issue 27 on CORA Fig. 3's 2-agent differential game
  controls 200000 cora_mappo_continuous.py diff:2agents "$TV_DIFF" 16 oracle
}
four_arms() {  # steps env-id script-suffix mc|qc [flags...]: issue 27's arms, paired by seed: MAPPO, HAPPO,
  # CORA-MAPPO and its equal split of A_N, every arm at its script's family row (no hyperparameter
  # flag: Table V's row of the family, its K, and one minibatch count for all four arms)
  local steps=$1 env=$2 s=$3 critic=$4 cflag=""
  shift 4
  [ "$critic" = qc ] && cflag="--critic quadratic"
  emit "$steps" "mappo$s.py" "$env" "$@"
  emit "$steps" "happo$s.py" "$env" "$@"
  # shellcheck disable=SC2086  # an empty $cflag adds no word
  emit "$steps" "cora_mappo$s.py" "$env" "$@" $cflag --exp-name "cora_mappo${s}_$critic"
  # shellcheck disable=SC2086
  emit "$steps" "cora_mappo$s.py" "$env" "$@" $cflag --allocation equal --exp-name "cora_mappo${s}_${critic}_equal"
}
group_smax_controls() {  # issue 27 on CORA Fig. 6's maps in SMAX (2s_vs_1sc is not in SMAX): 4 minibatches for
  # every arm. On 8m the MC pass over 127 coalitions costs ~9 s an update here (176 SPS,
  # docs/benchmarks.md): CORA runs its quadratic critic there (682 SPS) on both of its arms.
  local map
  for map in 3m 2s3z 3s_vs_5z; do four_arms 400000 "smax:$map" "" mc --eval-interval 100000; done
  four_arms 400000 smax:8m "" qc --eval-interval 100000
}
group_smax_shared_actor() {  # issue 27: the credit on MAPPO's arrangement (one shared actor with agent ids):
  # CORA-MAPPO-MC --share-actor against the same with the equal split, paired by seed with each
  # other and with smax_controls' MAPPO (same seeds, same SMAX row)
  local map
  for map in 3m 2s3z; do
    emit 400000 cora_mappo.py "smax:$map" --eval-interval 100000 --share-actor --exp-name cora_mappo_mc_shared
    emit 400000 cora_mappo.py "smax:$map" --eval-interval 100000 --share-actor --allocation equal --exp-name cora_mappo_mc_shared_equal
  done
}
group_mamujoco_controls() {  # issue 27 on CORA Fig. 5's tasks with the fewest agents first (K = 64, 4 envs,
  # the full batch for every arm); 1M steps, run here at --steps-scale 0.3 (docs/reproduce.md)
  local task
  for task in Hopper-3x1 HalfCheetah-2x3 Walker2d-2x3 HalfCheetah-6x1 Ant-4x2; do
    four_arms 1000000 "mamujoco:$task" _continuous mc --eval-interval 100000
  done
}
group_navigation_controls() {  # issue 27 on CORA Fig. 4's navigation with BenchMARL's task settings, where our
  # MAPPO is at parity (docs/parity.md: 90 % of its final by 133k steps); 64 envs, 4 minibatches for every arm
  four_arms 500000 "vmas:navigation,n_agents=3,shared_rew=False" _continuous mc --eval-interval 100000
}
group_feature_norm() {  # issue 29: MAPPO with and without on-policy's input LayerNorm, paired by seed, at
  # the family rows (no other flag)
  local env script
  for env in smax:2s3z mamujoco:HalfCheetah-2x3; do
    script=mappo.py
    [ "${env%%:*}" = mamujoco ] && script=mappo_continuous.py
    emit 1000000 "$script" "$env" --eval-interval 100000
    emit 1000000 "$script" "$env" --eval-interval 100000 --feature-norm --exp-name "${script%.py}_feature_norm"
  done
}
group_vmas() {  # CORA Fig. 4 (discrete actions; navigation runs 64 envs, the others 16)
  cora_grid 2000000 discrete 16 "$TV_VMAS" vmas:multi_give_way vmas:give_way
  cora_grid 2000000 discrete 16 "$TV_VMAS_NAV" vmas:navigation
}
group_give_way() {  # the VMAS scenario that fits a small CPU
  cora_grid 2000000 discrete 16 "$TV_VMAS" vmas:give_way
}
group_mamujoco() {  # CORA Fig. 5 (MaMuJoCo v5; K = 64)
  cora_grid 2000000 continuous 64 "$TV_MUJOCO" mamujoco:Ant-4x2 mamujoco:HalfCheetah-6x1 \
    mamujoco:HalfCheetah-2x3 mamujoco:Walker2d-2x3 mamujoco:Hopper-3x1
}
SMAC_MAPS="3s_vs_5z 8m 2s_vs_1sc 2s3z 3m"
# CORA Fig. 6 compares MAPPO, HAPPO and CORA-PPO (and our CORA-HAPPO); StarCraft II 4.10 needed.
smac_like() {  # family
  local map algo
  for map in $SMAC_MAPS; do
    for algo in "mappo.py" "happo.py" "cora_mappo.py --critic mc --mc-samples 64 $CORA_SHARED --exp-name cora_mappo_mc" \
                "cora_happo.py --critic mc --mc-samples 64 $CORA_SHARED --exp-name cora_happo_mc"; do
      emit_spec 10000000 "$1:$map" "$TV_SMAC" "$algo"
    done
  done
}
group_smac() { smac_like smac; }
group_smax() { smac_like smax; }  # JaxMARL's SMAX: same maps, not the same game as SMAC
group_grf() {  # CORA Fig. 7 (gfootball; cleanmarl/envs/install_gfootball.sh builds it)
  local sc algo
  for sc in academy_3_vs_1_with_keeper academy_counterattack_easy academy_counterattack_hard; do
    for algo in "mappo.py" "happo.py" "cora_mappo.py --critic mc --mc-samples 64 $CORA_SHARED --exp-name cora_mappo_mc"; do
      emit_spec 10000000 "grf:$sc" "$TV_GRF" "$algo"
    done
  done
}

# Issue 19's parity: our MAPPO with no hyperparameter flags (the env family's row of CORA Table V, 4
# minibatches), and with the full batch (what choosing 4 did), against a peer's MAPPO with the
# peer's own defaults, on the peer's home task, at equal env steps.
# BenchMARL runs from the Python in BENCHMARL_PYTHON (default .venv-bench/bin/python, see
# requirements-bench.txt) and is left out, with the install line, where it is absent. JaxMARL's
# MAPPO (SMAX 2s3z/3s5z) is a script in its repository's baselines/ that logs only to W&B: not
# wired here (docs/parity.md); our SMAX arms run, and its published-config figure is the reference.
group_parity() {
  local bm=${BENCHMARL_PYTHON:-$ROOT/.venv-bench/bin/python} steps seed
  local nav="vmas:navigation,n_agents=3,shared_rew=False"
  emit 2000000 mappo_continuous.py "$nav" --eval-interval 100000
  emit 2000000 mappo_continuous.py "$nav" --eval-interval 100000 --num-minibatches 1 --exp-name mappo_continuous_mb1
  if "$bm" -c "import benchmarl" 2>/dev/null; then
    steps=$(awk -v s=2000000 -v x="$SCALE" 'BEGIN { v = int(s * x + 0.5); print (v < 1 ? 1 : v) }')
    for seed in ${SEEDS//,/ }; do
      echo "$bm $ROOT/docs/parity_benchmarl.py --task navigation --seed $seed --frames $steps --out parity"
    done
  else
    echo "parity: BenchMARL is not installed, its runs are left out: python -m venv --system-site-packages" \
      ".venv-bench && .venv-bench/bin/pip install -r requirements-bench.txt" >&2
  fi
  for map in 2s3z 3s5z; do  # our defaults, the full batch, and rMAPPO's GRU policy (JaxMARL's has one)
    emit 1000000 mappo.py "smax:$map" --eval-interval 100000
    emit 1000000 mappo.py "smax:$map" --eval-interval 100000 --num-minibatches 1 --exp-name mappo_mb1
    emit 1000000 rmappo.py "smax:$map" --eval-interval 100000 --exp-name mappo_gru
  done
}

# ILVF Table 1 as flags: ppo_epoch 15, clip 0.2, entropy 0.01, lr 8e-5 (actor and critic), Huber
# delta 10, clipped value loss, value normalization, hidden 64 (the critic rate 1e-3 is measured:
# docs/ilvf.md). Table 1's network (ReLU, input and hidden LayerNorms) is ilvf_ppo.py's default and
# that of the MAPPO scripts' reward-sum rows (mpe, pcp, cacc, atsc, coupled), so no flag says it.
T1_ILVF="--update-epochs 15 --clip-coef 0.2 --ent-coef 0.01 --learning-rate 8e-5 --critic-learning-rate 1e-3 --huber-delta 10 --hidden-dim 64 --eval-episodes 32"
# ILVF Fig. 3: ILVF-P (learned influence) against MAPPO, and ILVF-PPO's two extremes, the global
# value function (MAPPO's advantage) and the individual one (IPPO-C).
ilvf_grid() {  # steps env-ids...
  local steps=$1 env mode
  shift
  for env in "$@"; do
    emit "$steps" mappo.py "$env" "$T1_ILVF"
    for mode in learned oracle global individual; do
      emit "$steps" ilvf_ppo.py "$env" "$T1_ILVF" --influence "$mode" --exp-name "ilvf_ppo_$mode"
    done
  done
}
group_encircle() { ilvf_grid 2000000 mpe:encircle-8 mpe:encircle-20; }
group_pcp() { ilvf_grid 2000000 pcp:default; }
group_cacc() { ilvf_grid 1000000 cacc:catchup cacc:slowdown; }
group_atsc() { ilvf_grid 1000000 atsc:large-grid; }
group_ilvf_ablation() {  # ILVF App. C (no inferring, Fig. 8) and App. D (Fig. 9) on MPE Encircle, 20 agents
  local env=mpe:encircle-20 variant
  emit 2000000 ilvf_ppo.py "$env" "$T1_ILVF" --no-inferring --exp-name ilvf_ppo_no_inferring
  for variant in "--w-init identity|w_identity" "--w-init ones|w_ones" "--discretize threshold --threshold 0.2|threshold_0.2" \
                 "--discretize threshold --threshold 0.5|threshold_0.5" "--discretize threshold --threshold 0.8|threshold_0.8" \
                 "--tau 0.5|tau_0.5" "--tau 2.0|tau_2"; do
    # shellcheck disable=SC2086
    emit 2000000 ilvf_ppo.py "$env" "$T1_ILVF" ${variant%|*} --exp-name "ilvf_ppo_${variant#*|}"
  done
}

# name | description | default seeds (CORA Table V "Runs"; the ILVF paper states none: 5)
GROUP_TABLE="matrix|CORA Fig. 2: Matrix Team Game and Multi-Peak 5/10/15, 8 arms (MAPPO both actor arrangements, CORA w/o std, CORA-HAPPO)|1,2,3,4,5
diff|CORA Fig. 3/8: differential games, 2 and 5 agents, 8 arms (as matrix)|1,2,3,4,5
diff_coalitions|CORA Fig. 8: coalition sample size 10/15/20/25/30, 5 agents|1,2,3,4,5
matrix_controls|issue 27: CORA-MAPPO-MC against its equal split, oracle coalition values, GAE vs Q - V A_N (Fig. 2 games)|1,2,3,4,5
diff_controls|issue 27: the same controls on the 2-agent differential game (Fig. 3)|1,2,3,4,5
feature_norm|issue 29: MAPPO with and without --feature-norm on SMAX 2s3z and MaMuJoCo HalfCheetah-2x3|1,2,3
smax_controls|issue 27: SMAX 3m, 2s3z, 3s_vs_5z, 8m: MAPPO, HAPPO, CORA-MAPPO-MC (QC on 8m) and its equal split, 400k steps|1,2,3
smax_shared_actor|issue 27: SMAX 3m, 2s3z: CORA-MAPPO-MC with MAPPO's shared actor, and its equal split, 400k steps|1,2,3
mamujoco_controls|issue 27: MaMuJoCo Hopper-3x1, HalfCheetah-2x3 (then Walker2d-2x3, HalfCheetah-6x1, Ant-4x2): the same four arms, 1M steps|1,2,3
navigation_controls|issue 27: VMAS navigation, BenchMARL's settings: the same four arms, 500k steps|1,2,3
vmas|CORA Fig. 4: VMAS multi_give_way, give_way, navigation|1,2,3,4,5
give_way|CORA Fig. 4: VMAS give_way only|1,2,3,4,5
mamujoco|CORA Fig. 5: MaMuJoCo Ant 4x2, HalfCheetah 6x1/2x3, Walker2d 2x3, Hopper 3x1|1,2,3,4,5
smac|CORA Fig. 6: SMAC maps (needs StarCraft II 4.10)|1,2,3,4,5,6,7,8
smax|CORA Fig. 6 maps on JaxMARL's SMAX (not SMAC)|1,2,3,4,5,6,7,8
grf|CORA Fig. 7: GRF academies (needs gfootball's build)|1,2,3,4,5,6,7,8
encircle|ILVF Fig. 3: MPE Encircle, 8 and 20 agents|1,2,3,4,5
pcp|ILVF Fig. 3: Predator-Capture-Prey|1,2,3,4,5
cacc|ILVF Fig. 3: CACC catch-up and slow-down|1,2,3,4,5
atsc|ILVF Fig. 3: ATSC large grid (needs SUMO)|1,2,3,4,5
ilvf_ablation|ILVF App. C/D: no inferring, W init, discretization, tau; Encircle 20|1,2,3,4,5
parity|issue 19: our MAPPO at its family defaults vs BenchMARL's on VMAS navigation; SMAX 2s3z, 3s5z|1,2,3"

group_field() {  # name field-number
  echo "$GROUP_TABLE" | awk -F'|' -v g="$1" -v f="$2" '$1 == g { print $f }'
}

# ---- speed group (steps per second; unchanged measurements) ----------------------------------
# Each training figure is the SPS a script reports at the end of its run (whole loop: rollout,
# GAE and 10 full-batch PPO epochs); "env only" steps the same env with random actions.
# STEPS=128000 bash benchmark.sh speed for longer runs. Note the load average printed first.
group_speed() {
  STEPS=${STEPS:-64000}
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)   cores: $(nproc)   total steps per run: $STEPS"
  printf '%-56s %10s\n' "benchmark" "SPS"
  local n id script
  for n in 3 4; do
    id="vmas:navigation,n_agents=$n"
    printf '%-56s %10s\n' "env only, random actions: $id, 64 envs" "$(env_only "$id" discrete 64)"
    printf '%-56s %10s\n' "mappo.py $id, 64 envs" "$(train mappo.py "$id" 64)"
  done
  for script in mappo_continuous.py optimistic_mappo.py optimistic_mappo_continuous.py happo.py happo_continuous.py \
      cora_happo.py cora_happo_continuous.py; do
    printf '%-56s %10s\n' "$script vmas:navigation, 64 envs" "$(train "$script" vmas:navigation 64)"
  done
  printf '%-56s %10s\n' "mappo.py matrix:team, 4 envs" "$(train mappo.py matrix:team 4)"
  printf '%-56s %10s\n' "mappo_continuous.py diff:2agents, 4 envs" "$(train mappo_continuous.py diff:2agents 4)"

  # CORA: the core QP and CORA-MAPPO's SPS relative to MAPPO's
  echo
  if [ -f docs/cora_speed.py ]; then
    python docs/cora_speed.py
  else
    echo "(CORA speed skipped: docs/cora_speed.py not found)"
  fi
  head_to_head
}

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

train() {  # script, env id, num envs (STEPS steps); the full batch, as the figures in docs/benchmarks.md
  python "cleanmarl/$1" --env-id "$2" --num-envs "$3" --num-minibatches 1 --total-timesteps "$STEPS" --threads 1 2>&1 \
    | grep -o 'SPS=[0-9]*' | tail -1 | cut -d= -f2
}

# Head-to-head with BenchMARL's MAPPO (TorchRL), when installed. Same task settings (BenchMARL's
# navigation config: 3 agents, shared_rew=False, 100 steps), 64 envs x 100 steps per batch (ours: x 50 continuous), 10
# full-batch epochs, 64x64 tanh MLPs, one thread; runs alternate.
head_to_head() {
  BENCHMARL_PYTHON=${BENCHMARL_PYTHON:-$ROOT/.venv-bench/bin/python}  # as the parity group
  if ! "$BENCHMARL_PYTHON" -c "import benchmarl" 2>/dev/null; then
    echo "(head-to-head skipped: BenchMARL not installed; see requirements-bench.txt)"
    return 0
  fi
  local id="vmas:navigation,n_agents=3,shared_rew=False" round kind script ours theirs
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
}

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

# ---- dispatch ---------------------------------------------------------------------------------
usage() {
  sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

die() { echo "benchmark.sh: $*" >&2; exit 2; }

list_groups() {
  printf '%-20s %-8s %s\n' group commands description
  printf '%-20s %-8s %s\n' speed - "steps per second of the scripts, CORA's QP and the BenchMARL head-to-head"
  printf '%-20s %-8s %s\n' gpu - "the device check: each script trains with --cuda twice and on the CPU (docs/device_check.py)"
  local name desc seeds
  while IFS='|' read -r name desc seeds; do
    SEEDS=$seeds
    printf '%-20s %-8s %s\n' "$name" "$("group_$name" | wc -l)" "$desc (seeds $seeds)"
  done <<< "$GROUP_TABLE"
}

# Writes DIR/commands.txt and DIR/array_task.sh: an sbatch script whose task i runs line i, from
# DIR, where `cleanmarl` links to this checkout so the scripts' runs/ land in DIR/runs.
write_array() {  # dir
  local dir=$1 count
  mkdir -p "$dir/logs"
  commands > "$dir/commands.txt"
  count=$(wc -l < "$dir/commands.txt")
  [ "$count" -gt 0 ] || die "no commands left after --only '$ONLY'"
  ln -sfn "$ROOT/cleanmarl" "$dir/cleanmarl"
  cat > "$dir/array_task.sh" <<EOF
#!/usr/bin/env bash
# Slurm job array for benchmark group '$GROUP': task i runs line i of commands.txt. A task stopped
# by SIGTERM (preemption, or the warning 120 s before the time limit) saves its checkpoint, is
# requeued, and resumes from that checkpoint (the last "model saved to" line of its log).
#SBATCH --job-name=cleanmarl-$GROUP
#SBATCH --array=1-$count
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --time=${SLURM_TIME:-24:00:00}
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=$dir/logs/slurm-%A_%a.out
set -uo pipefail
cd "$dir"
i=\${SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID to a line number of commands.txt}
cmd=\$(sed -n "\${i}p" commands.txt)
[ -n "\$cmd" ] || { echo "no command on line \$i of $dir/commands.txt" >&2; exit 2; }
log="logs/task-\$i.log"
if [ -f "\$log" ] && [ "\$(head -n 1 "\$log")" != "\$cmd" ]; then  # line i held another command (another
  mv "\$log" "logs/task-\$i.\$(date +%s).log"                       # --seeds or --only): not ours to resume
fi
ckpt=\$(sed -n 's/^model saved to //p' "\$log" 2>/dev/null | tail -n 1)
[ -n "\$ckpt" ] && [ -f "\$ckpt" ] && cmd="\$cmd --checkpoint \$ckpt"  # an earlier attempt was stopped
echo "\$cmd" >> "\$log"
bash -c "exec \$cmd" >> "\$log" 2>&1 &
child=\$!
trap 'kill -TERM \$child 2>/dev/null' TERM INT  # the script saves its checkpoint and exits 143
wait \$child
rc=\$?
while kill -0 \$child 2>/dev/null; do wait \$child; rc=\$?; done  # a trapped signal ends the first wait early
echo "task \$i exit \$rc: \$cmd" >> logs/status.txt
if [ "\$rc" = 143 ] && [ -n "\${SLURM_JOB_ID:-}" ]; then
  scontrol requeue "\${SLURM_ARRAY_JOB_ID:-\$SLURM_JOB_ID}_\$i" && echo "task \$i requeued" >> logs/status.txt
fi
exit \$rc
EOF
  echo "$count"
}

commands() {  # the group's commands, filtered by --only
  "group_$GROUP" | { grep -E -- "$ONLY" || true; }
}

# Parsed whole before it runs (the call is on the file's last line), so editing this file while a
# group runs from it cannot change the running copy.
main() {
  [ $# -ge 1 ] || usage
  case "$1" in
    --list) list_groups; exit 0 ;;
    -h|--help) usage 0 ;;
    speed) [ $# -eq 1 ] || die "the speed group takes no options (STEPS=N bash benchmark.sh speed)"
           group_speed; exit 0 ;;
    gpu) shift; exec python docs/device_check.py "$@" ;;
  esac
  GROUP=$1
  shift
  [ -n "$(group_field "$GROUP" 1)" ] || die "unknown group '$GROUP'; valid: speed $(echo "$GROUP_TABLE" | cut -d'|' -f1 | tr '\n' ' ')(--list describes them)"
  DRY=0 JOBS=1 MODE=local RESULTS=results ONLY=""
  SEEDS=$(group_field "$GROUP" 3)
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) DRY=1 ;;
      --slurm) MODE=slurm ;;
      --seeds) SEEDS=${2:?--seeds needs a list such as 1,2,3}; shift ;;
      --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
      --steps-scale) SCALE=${2:?--steps-scale needs a number}; shift ;;
      --results) RESULTS=${2:?--results needs a directory}; shift ;;
      --only) ONLY=${2:?--only needs a pattern}; shift ;;
      *) die "unknown option '$1'; valid: --dry-run --seeds LIST --jobs N --steps-scale X --only REGEX --results DIR --slurm" ;;
    esac
    shift
  done
  [[ $SEEDS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--seeds takes comma-separated integers such as 1,2,3, got '$SEEDS'"
  [[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs takes a positive integer, got '$JOBS'"
  [[ $SCALE =~ ^[0-9]*\.?[0-9]+([eE]-?[0-9]+)?$ ]] && python -c "assert $SCALE > 0" 2>/dev/null \
    || die "--steps-scale takes a positive number, got '$SCALE'"

  if [ "$DRY" = 1 ]; then
    commands
    exit 0
  fi
  mkdir -p "$RESULTS"
  DIR=$(cd "$RESULTS" && pwd)/$GROUP
  COUNT=$(write_array "$DIR")
  if [ "$MODE" = slurm ]; then
    echo "wrote $DIR/array_task.sh ($COUNT array tasks; commands in $DIR/commands.txt)"
    echo "submit:  sbatch $DIR/array_task.sh          (--array=1-$COUNT%M caps running tasks at M)"
    echo "then:    python docs/plot_results.py $DIR/runs --out $DIR/plots   (docs/results/ holds the committed results: copy there under a new name)"
    exit 0
  fi
  echo "$COUNT commands on $JOBS local worker(s); logs in $DIR/logs, runs in $DIR/runs"
  seq 1 "$COUNT" | xargs -P "$JOBS" -I{} env SLURM_ARRAY_TASK_ID={} bash "$DIR/array_task.sh" \
    || echo "some commands failed: see $DIR/logs/status.txt"
  echo "done: python docs/plot_results.py $DIR/runs --out $DIR/plots   (docs/results/ holds the committed results: copy there under a new name)"
}

main "$@"; exit
