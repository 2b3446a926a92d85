"""Mutation check: plant known bugs in a copy of the project and run the tests that must catch them.

Each mutation is one small edit of one file (the text must occur exactly once) and the tests that
stand for that piece of the algorithm. A mutation is *caught* when those tests fail. Run by hand
(not in CI: it runs learning tests, several minutes per mutation):

    python tests/mutations.py            # all mutations, prints caught / missed
    python tests/mutations.py --list     # what is planted where
    python tests/mutations.py 3 5        # only mutations 3 and 5

Exit status 1 when any mutation is missed. The copy lives in a temporary directory; the working
tree is never touched.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORA_TESTS = "tests/test_cora.py"
ORDER_TESTS = "tests/test_reading_order.py"

# (what the bug is, file, original text, planted text, tests that must fail)
MUTATIONS = [
    ("CORA-MAPPO: coalition advantage V - Q instead of Q - V (Eq. 7)", "cleanmarl/cora_mappo.py",
     "return coalition_q - value.unsqueeze(-1)", "return value.unsqueeze(-1) - coalition_q",
     [f"{CORA_TESTS}::test_coalition_advantages_are_q_minus_v_and_credit_the_better_coalition",
      f"{CORA_TESTS}::test_q_critics_track_the_policy_on_multi_peak"]),
    ("CORA-MAPPO: the equal split instead of the core allocation (i.e. MAPPO)", "cleanmarl/cora_mappo.py",
     "mb_adv = b_alloc[mb]  # [M, n]: each agent's allocated advantage",
     "mb_adv = b_advantages[mb, None].expand(-1, n) / n  # planted: the equal split",
     [f"{CORA_TESTS}::test_cora_beats_mappo_in_both_arrangements_on_multi_peak"]),
    ("CORA-HAPPO: coalition advantage V - Q", "cleanmarl/cora_happo.py",
     "return coalition_q - value.unsqueeze(-1)", "return value.unsqueeze(-1) - coalition_q",
     [f"{CORA_TESTS}::test_coalition_advantages_are_q_minus_v_and_credit_the_better_coalition"]),
    ("sample_coalitions always returns the first m coalitions", "cleanmarl/cora_mappo.py",
     "return coalitions[torch.randperm(len(coalitions), generator=generator)[:m].to(coalitions.device)]",
     "return coalitions[:m]",
     [f"{CORA_TESTS}::test_sample_coalitions_is_uniform"]),
    ("HAPPO (continuous): max instead of min in the clipped surrogate", "cleanmarl/happo_continuous.py",
     "return factor * torch.min(ratio * adv,", "return factor * torch.max(ratio * adv,",
     ["tests/test_scripts.py::test_happo_surrogate_by_hand"]),
    ("HAPPO (continuous): the factor M never takes the earlier agents' ratios", "cleanmarl/happo_continuous.py",
     "factor = factor * (newlogprob - b_logprobs[:, k]).exp()", "factor = factor * 1.0",
     ["tests/test_scripts.py::test_happo_continuous_factor_is_the_product_of_earlier_agents_ratios"]),
    ("CORA-HAPPO (continuous): min -> max in the clipped surrogate", "cleanmarl/cora_happo_continuous.py",
     "return factor * torch.min(ratio * adv,", "return factor * torch.max(ratio * adv,",
     ["tests/test_scripts.py::test_happo_surrogate_by_hand"]),
    ("Optimistic MAPPO (continuous): min instead of max in the leaky transform",
     "cleanmarl/optimistic_mappo_continuous.py",
     "return torch.max(leak * adv, adv)", "return torch.min(leak * adv, adv)",
     ["tests/test_scripts.py::test_optimistic_transform"]),
    ("ILVF: the training loop aggregates with W_hat transposed (Eq. 10 read the wrong way round)",
     "cleanmarl/ilvf_ppo.py",
     "b_local_adv = local_advantages(b_advantages, b_W_hat)",
     "b_local_adv = local_advantages(b_advantages, b_W_hat.transpose(-1, -2))",
     ["tests/test_ilvf.py::test_learned_influence_reaches_the_optimum_where_individual_advantages_fail"]),
    ("CORA-PPO-QC: coalition values with the policy inside C and the taken action outside",
     "cleanmarl/cora_mappo.py",
     "torch.where(inside, onehot[sl, None], probs[sl, None])", "torch.where(inside, probs[sl, None], onehot[sl, None])",
     [f"{CORA_TESTS}::test_quadratic_critic_closed_form_is_the_exact_expectation"]),
    ("CORA Monte Carlo: the taken actions swapped in for the agents outside C", "cleanmarl/cora_mappo.py",
     "mixed = drawn.unsqueeze(2) + inside @ swap", "mixed = drawn.unsqueeze(2) + (1 - inside) @ swap",
     [f"{CORA_TESTS}::test_monte_carlo_pass_equals_the_critic_on_each_mixed_joint_action"]),
    ("Eq. (24): the exact finish accepts points that miss the KKT conditions by 1e-2", "cleanmarl/cora_mappo.py",
     "exact = (bad == 0) & (kkt <= 1e-9)", "exact = (bad == 0) & (kkt <= 1e-2)",
     [f"{CORA_TESTS}::test_core_allocation_matches_daqp_and_osqp"]),
    ("CORA-HAPPO: every agent's surrogate uses the mean allocation", "cleanmarl/cora_happo.py",
     "happo_surrogate(ratio, mb_adv[:, k], factor[mb], args.clip_coef)",
     "happo_surrogate(ratio, mb_adv.mean(1), factor[mb], args.clip_coef)",
     ["tests/test_cora_happo.py::test_agent_k_uses_the_product_of_earlier_ratios_and_its_own_allocation"]),
    ("CORA-MAPPO: truncated episodes no longer bootstrapped from V(final state)", "cleanmarl/cora_mappo.py",
     "rewards[t] += args.gamma * value_of(step.final_state) * step.truncated", "rewards[t] += 0.0 * step.truncated",
     [f"{ORDER_TESTS}::test_truncated_episodes_are_bootstrapped_from_the_final_state[cora_mappo]"]),
    ("CORA-MAPPO (continuous): truncated episodes no longer bootstrapped", "cleanmarl/cora_mappo_continuous.py",
     "rewards[t] += args.gamma * value_of(step.final_state) * step.truncated", "rewards[t] += 0.0 * step.truncated",
     [f"{ORDER_TESTS}::test_truncated_episodes_are_bootstrapped_from_the_final_state[cora_mappo_continuous]"]),
    ("HAPPO: the agents updated in a fixed order instead of a fresh random one", "cleanmarl/happo.py",
     "perm = torch.randperm(n).tolist()", "perm = list(range(n))",
     [f"{ORDER_TESTS}::test_happo_draws_a_fresh_agent_order_at_every_update[happo]"]),
    ("CORA-HAPPO: a fixed agent order", "cleanmarl/cora_happo.py",
     "perm = torch.randperm(n).tolist()", "perm = list(range(n))",
     [f"{ORDER_TESTS}::test_happo_draws_a_fresh_agent_order_at_every_update[cora_happo]"]),
]


def copy_project(dest):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def run_mutation(i, what, path, old, new, tests):
    with tempfile.TemporaryDirectory(prefix="cleanmarl-mutation-") as tmp:
        tmp = Path(tmp)
        copy_project(tmp)
        text = (tmp / path).read_text()
        if text.count(old) != 1:
            return "stale", f"the original text occurs {text.count(old)} times in {path}: update this mutation"
        (tmp / path).write_text(text.replace(old, new))
        start = time.time()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=tmp,
                           capture_output=True, text=True, env=env)
        tail = (r.stdout.strip().splitlines() or [""])[-1]
        if r.returncode == 1:  # some test failed: the bug is caught
            return "caught", f"{tail} ({time.time() - start:.0f} s)"
        if r.returncode == 0:
            return "MISSED", f"{tail} ({time.time() - start:.0f} s)"
        return "error", f"pytest exit {r.returncode}: {tail}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", type=int, help="numbers of the mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    bad = [i for i in args.only if not 1 <= i <= len(MUTATIONS)]
    if bad:
        parser.exit(2, f"error: no mutation {bad[0]}; valid: 1..{len(MUTATIONS)}\n")
    chosen = args.only or range(1, len(MUTATIONS) + 1)
    if args.list:
        for i in chosen:
            what, path, old, new, tests = MUTATIONS[i - 1]
            print(f"{i:>2}. {what}\n    {path}: {old!r} -> {new!r}\n    tests: {' '.join(tests)}")
        return 0
    results = []
    for i in chosen:
        verdict, detail = run_mutation(i, *MUTATIONS[i - 1])
        results.append(verdict)
        print(f"{i:>2}. {verdict:<6} {MUTATIONS[i - 1][0]}  [{detail}]", flush=True)
    caught = results.count("caught")
    print(f"{caught} of {len(results)} caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
