"""CORA-MAPPO: the core QP (Eq. 24) against independent solvers and the paper's worked examples,
coalition sampling, the closed-form quadratic critic, the Monte-Carlo estimator, and runs."""

import copy
import itertools

import daqp
import numpy as np
import osqp
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import linprog

from cleanmarl.cora_mappo import (QNet, QuadraticQ, all_coalitions, core_allocation, mc_coalition_q,
                                  sample_coalitions, scale_allocation)
from tests import test_scripts  # not its test functions by name: pytest would collect them again here
from tests.test_scripts import ROOT

CORA = ROOT / "cleanmarl" / "cora_mappo.py"
MAPPO = ROOT / "cleanmarl" / "mappo.py"


def qp_matrices(M, v, AN, reg):
    """Eq. (24) over x = (A, eps): min 1/2 x^T H x + f^T x, bl <= C x <= bu (row 0 an equality)."""
    m, n = M.shape
    H = np.diag(np.r_[np.full(n, 2 * reg), 0.0])
    f = np.r_[-2 * reg * AN / n * np.ones(n), 1.0]
    C = np.r_[np.r_[np.ones(n), 0.0][None], np.c_[M.astype(float), np.ones(m)], np.r_[np.zeros(n), 1.0][None]]
    bl, bu = np.r_[AN, v, 0.0], np.r_[AN, np.full(m, np.inf), np.inf]
    return H, f, C, bl, bu


def solve_daqp(M, v, AN, reg):
    H, f, C, bl, bu = qp_matrices(M, v, AN, reg)
    sense = np.zeros(len(bl), dtype=np.int32)
    sense[0] = 5  # equality
    x, _, flag, _ = daqp.solve(H, f, C, np.minimum(bu, 1e30), bl, sense)
    assert flag == 1
    return x[:-1], x[-1]


def solve_osqp(M, v, AN, reg):
    H, f, C, bl, bu = qp_matrices(M, v, AN, reg)
    prob = osqp.OSQP()
    prob.setup(sp.csc_matrix(H), f, sp.csc_matrix(C), bl, bu, eps_abs=1e-10, eps_rel=1e-10, max_iter=200000,
               polishing=True, verbose=False)
    x = prob.solve(raise_error=True).x
    return x[:-1], x[-1]


def least_core_lp(M, v, AN):
    """lambda = 0: the LP least-core value min eps."""
    m, n = M.shape
    r = linprog(np.r_[np.zeros(n), 1.0], A_ub=-np.c_[M.astype(float), np.ones(m)], b_ub=-v,
                A_eq=np.r_[np.ones(n), 0.0][None], b_eq=[AN], bounds=[(None, None)] * n + [(0, None)], method="highs")
    return r.x[-1]


def random_problem(n, B, seed):
    gen = torch.Generator().manual_seed(seed)
    coalitions = sample_coalitions(n, 2 ** (n - 1) - 1 if n > 2 else 2, gen)
    v = torch.randn(B, len(coalitions), generator=gen, dtype=torch.float64) * 3
    AN = torch.randn(B, generator=gen, dtype=torch.float64) * 3
    return coalitions, v, AN


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("reg", [1e-2, 1.0])
def test_core_allocation_matches_daqp_and_osqp(n, reg):
    coalitions, v, AN = random_problem(n, 40, seed=n)
    alloc, eps = core_allocation(coalitions, v, AN, reg)
    M = coalitions.numpy()
    for b in range(len(v)):
        a_daqp, _ = solve_daqp(M, v[b].numpy(), AN[b].item(), reg)
        assert np.abs(alloc[b].numpy() - a_daqp).max() <= 1e-4
        if b < 10:  # OSQP is slow at tight tolerances
            a_osqp, _ = solve_osqp(M, v[b].numpy(), AN[b].item(), reg)
            assert np.abs(alloc[b].numpy() - a_osqp).max() <= 1e-4
    torch.testing.assert_close(alloc.sum(1), AN)  # efficiency
    assert (eps >= 0).all()
    covered = alloc @ coalitions.double().T
    assert (covered >= v - eps[:, None] - 1e-9).all()  # every sampled constraint holds with eps


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_zero_reg_gives_the_lp_least_core_value(n):
    coalitions, v, AN = random_problem(n, 30, seed=10 + n)
    _, eps = core_allocation(coalitions, v, AN, 0.0)
    lp = [least_core_lp(coalitions.numpy(), v[b].numpy(), AN[b].item()) for b in range(len(v))]
    np.testing.assert_allclose(eps.numpy(), lp, atol=1e-6)


def _matches_daqp(coalitions, v, AN, reg, atol):
    alloc, eps = core_allocation(coalitions, v, AN, reg)
    M = coalitions.numpy()
    worst = max(np.abs(alloc[b].numpy() - solve_daqp(M, v[b].numpy(), AN[b].item(), reg)[0]).max() for b in range(len(v)))
    assert worst <= atol, worst
    covered = alloc @ coalitions.double().T
    assert (covered >= v - eps[:, None] - 1e-9).all()


@pytest.mark.parametrize("magnitude", [1e-2, 1.0, 1e3])
def test_core_allocation_on_near_additive_games_with_ties(magnitude):
    """Coalition advantages as a trained critic gives them: nearly additive, many exact ties
    (values rounded to a coarse grid), so many constraints bind at once (degenerate QPs)."""
    n, B = 8, 150
    gen = torch.Generator().manual_seed(5)
    coalitions = sample_coalitions(n, 2 ** (n - 1) - 1, gen)
    share = torch.randn(B, n, generator=gen, dtype=torch.float64)
    v = share @ coalitions.double().T + 0.3 * torch.randn(B, len(coalitions), generator=gen, dtype=torch.float64)
    v = (v * 4).round() / 4 * magnitude  # ties
    AN = (share.sum(1) + 0.5 * torch.randn(B, generator=gen, dtype=torch.float64)) * magnitude
    # 1e-4 of the data's size, 1e-3 below size 1 (Eq. 24's objective flattens as the data shrink)
    _matches_daqp(coalitions, v, AN, 1e-2, atol=(1e-3 if magnitude < 1 else 1e-4) * magnitude)


def test_each_sample_is_solved_as_if_alone():
    """Samples leave the batch as they finish: a sample's answer must not depend on the others in
    its batch (easy and degenerate ones mixed, in any order)."""
    coalitions, v, AN = random_problem(7, 60, seed=3)
    v[::3] = ((torch.randn(20, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
               @ coalitions.double().T) * 4).round() / 4  # degenerate: many rows bind at once
    alloc, eps = core_allocation(coalitions, v, AN, 1e-2)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    alloc_perm, _ = core_allocation(coalitions, v[perm], AN[perm], 1e-2)
    torch.testing.assert_close(alloc_perm, alloc[perm], rtol=0, atol=1e-8)
    for b in (0, 1, 30, 59):
        alone, _ = core_allocation(coalitions, v[b : b + 1], AN[b : b + 1], 1e-2)
        torch.testing.assert_close(alone[0], alloc[b], rtol=0, atol=1e-8)
        assert np.abs(alloc[b].numpy() - solve_daqp(coalitions.numpy(), v[b].numpy(), AN[b].item(), 1e-2)[0]).max() <= 1e-6


def test_samples_without_a_demanding_coalition_take_the_equal_split():
    coalitions, v, AN = random_problem(5, 20, seed=4)
    v = coalitions.double().sum(1) * AN[:, None] / 5 - v.abs() - 0.1  # every h < 0
    alloc, eps = core_allocation(coalitions, v, AN, 1e-2)
    torch.testing.assert_close(alloc, AN[:, None].expand(-1, 5) / 5)
    assert (eps == 0).all()


def test_table_iii_example_2():
    """Two agents: A_{1}(a_1) = 5, A_{2}(a_2) = -5, A_N = -5. Sharing gives both -5; the core
    keeps agent 1's promising action: the least core is (2.5, -7.5) with eps = 2.5."""
    coalitions = torch.tensor([[True, False], [False, True]])
    v, AN = torch.tensor([[5.0, -5.0]], dtype=torch.float64), torch.tensor([-5.0], dtype=torch.float64)
    alloc, eps = core_allocation(coalitions, v, AN, 0.0)
    torch.testing.assert_close(alloc[0], torch.tensor([2.5, -7.5], dtype=torch.float64), atol=1e-6, rtol=0)
    assert eps.item() == pytest.approx(2.5, abs=1e-6)
    alloc, _ = core_allocation(coalitions, v, AN, 1e-2)  # the Std term only pulls slightly toward -2.5 each
    assert alloc[0, 0] > 0 > alloc[0, 1] and alloc[0].sum().item() == pytest.approx(-5.0)


def test_table_iv_three_agents():
    """Pair coalitions only: A_12 = 1, A_13 = 0, A_23 = 5, A_N = -2. The least-core value is
    10/3 (summing the three constraints), and coalition {2, 3} keeps a positive total credit
    although the global advantage is negative."""
    coalitions = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    v, AN = torch.tensor([[1.0, 0.0, 5.0]], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
    for reg in (0.0, 1e-2):
        alloc, eps = core_allocation(coalitions, v, AN, reg)
        a1, a2, a3 = alloc[0].tolist()
        if reg == 0.0:
            assert eps.item() == pytest.approx(10 / 3, abs=1e-6)
        assert a2 + a3 >= 5 - eps.item() - 1e-9 and a2 + a3 > 0 > a1
        assert a2 + a3 > a1 + a2 and a2 + a3 > a1 + a3  # the best coalition gets the most credit


def test_allocation_scaling_keeps_the_core():
    coalitions, v, AN = random_problem(4, 64, seed=3)
    alloc, eps = core_allocation(coalitions, v, AN, 1e-2)
    sigma = alloc.std() + 1e-8
    scaled = scale_allocation(alloc)
    torch.testing.assert_close(scaled.sum(1), AN / sigma)
    assert (scaled @ coalitions.double().T >= (v - eps[:, None]) / sigma - 1e-9).all()
    shifted = alloc - alloc.mean(0)  # a per-agent mean shift, for contrast, breaks efficiency
    assert not torch.allclose(shifted.sum(1), AN)


def test_sample_coalitions():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 5, 8):
        every = all_coalitions(n)
        assert every.shape == (2**n - 2, n) and len({tuple(r.tolist()) for r in every}) == 2**n - 2
        assert every.any(1).all() and not every.all(1).any()  # proper, non-empty
        m = 2 ** (n - 1) - 1
        picked = sample_coalitions(n, m, gen)
        assert picked.shape == (m, n) and len({tuple(r.tolist()) for r in picked}) == m
        assert picked.any(1).all() and not picked.all(1).any()
        assert torch.equal(sample_coalitions(n, 10**6, gen), every)


def test_sample_coalitions_is_uniform():
    """Alg. 1 l. 13 draws m of the 2^n - 2 coalitions uniformly: over N draws each coalition is
    picked m/(2^n - 2) of the time, and each pair of coalitions m(m-1)/((2^n - 2)(2^n - 3)) of the
    time (a draw that favoured some sets would skew the pairs even with the singles right).
    Bounds: 5 binomial standard deviations."""
    n, m, N = 4, 3, 14_000
    every = all_coalitions(n)
    code = {tuple(r.tolist()): i for i, r in enumerate(every)}
    gen = torch.Generator().manual_seed(0)
    singles, pairs = np.zeros(len(every)), np.zeros((len(every), len(every)))
    for _ in range(N):
        idx = sorted(code[tuple(r.tolist())] for r in sample_coalitions(n, m, gen))
        singles[idx] += 1
        for i, j in itertools.combinations(idx, 2):
            pairs[i, j] += 1
    p1 = m / len(every)
    assert np.abs(singles - N * p1).max() <= 5 * np.sqrt(N * p1 * (1 - p1)), singles
    p2 = m * (m - 1) / (len(every) * (len(every) - 1))
    upper = pairs[np.triu_indices(len(every), 1)]
    assert np.abs(upper - N * p2).max() <= 5 * np.sqrt(N * p2 * (1 - p2)), upper


@pytest.mark.parametrize("module", ["cora_mappo", "cora_happo", "cora_mappo_continuous", "cora_happo_continuous"])
def test_coalition_advantages_are_q_minus_v_and_credit_the_better_coalition(module):
    """Eq. (7)'s wiring: A_C = min_j E[Q_j] - V(s) in return units (the Q critics learn in V's
    normalized units). Then a Table III-style batch, through the core QP: n = 3, V = 0, A_N = 3, the
    pair {0, 1} whose actions formed the good joint action has Q = 6, agent 2 alone -4, the pairs
    with 2 -3, the singletons 0 and 1 Q = 1. The least core gives (3, 3, -3) (eps = 0): agents 0
    and 1 get more than the equal split (1 each), agent 2 less. With A_C = V - Q it turns round."""
    import importlib

    mod = importlib.import_module(f"cleanmarl.{module}")
    rms = mod.RunningMeanStd()
    rms.mean.fill_(2.0)
    rms.var.fill_(9.0)
    q_norm, value = torch.tensor([[0.5, -1.0, 1.0]]), torch.tensor([4.0])
    expected = 2.0 + 3.0 * q_norm - 4.0  # denormalized Q minus V
    torch.testing.assert_close(mod.coalition_advantages(q_norm, value, rms), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(mod.coalition_advantages(q_norm, value), q_norm - 4.0)

    coalitions = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    q = torch.tensor([[1.0, 1.0, -4.0, 6.0, -3.0, -3.0]], dtype=torch.float64)
    adv = mod.coalition_advantages(q, torch.zeros(1, dtype=torch.float64))
    alloc, eps = mod.core_allocation(coalitions, adv, torch.tensor([3.0], dtype=torch.float64), 1e-2)
    torch.testing.assert_close(alloc, torch.tensor([[3.0, 3.0, -3.0]], dtype=torch.float64), rtol=0, atol=1e-6)
    assert alloc[0, 0] > 1.0 and alloc[0, 1] > 1.0 and alloc[0, 2] < 1.0 and eps.item() == pytest.approx(0.0, abs=1e-9)


def brute_force_coalition_q(value_fn, actions, probs, coalition, A):
    """E_{a_-C ~ pi}[Q(s, a_C, a_-C)] by enumerating the joint actions of the agents outside C."""
    n = len(coalition)
    outside = [i for i in range(n) if not coalition[i]]
    total = 0.0
    for combo in itertools.product(range(A), repeat=len(outside)):
        joint, weight = list(actions), 1.0
        for i, a in zip(outside, combo):
            joint[i] = a
            weight *= probs[i, a].item()
        total = total + weight * value_fn(torch.tensor(joint))
    return total


def critic_inputs(n, A, S, B):
    """Random states [B, S], taken actions [B, n] and policies [B, n, A], seeded."""
    torch.manual_seed(0)
    state = torch.randn(B, S, dtype=torch.float64)
    actions = torch.randint(0, A, (B, n))
    probs = torch.softmax(torch.randn(B, n, A, dtype=torch.float64), -1)
    return state, actions, probs, all_coalitions(n)


def test_quadratic_critic_closed_form_is_the_exact_expectation():
    n, A, S, B = 4, 3, 5, 3
    state, actions, probs, coalitions = critic_inputs(n, A, S, B)
    q = QuadraticQ(S, n, A, hidden=16).double()
    closed = q.coalition_q(state, actions, torch.distributions.Categorical(probs=probs), coalitions)  # [B, m]
    for b in range(B):
        for c, coalition in enumerate(coalitions.tolist()):
            per_twin = brute_force_coalition_q(lambda joint: q(state[b : b + 1], joint[None])[:, 0], actions[b].tolist(),
                                               probs[b], coalition, A)
            assert closed[b, c].item() == pytest.approx(per_twin.min().item(), abs=1e-9)


def test_monte_carlo_coalition_values_converge():
    n, A, S, B = 3, 4, 5, 6
    state, actions, probs, coalitions = critic_inputs(n, A, S, B)
    q = QNet(S, n, A, hidden=16).double()
    exact = torch.tensor([[brute_force_coalition_q(lambda joint: q(state[b : b + 1], joint[None])[0], actions[b].tolist(),
                                                   probs[b], coalition, A).item()
                           for coalition in coalitions.tolist()] for b in range(B)], dtype=torch.float64)
    errors = []
    for K in (4, 64, 4096):
        torch.manual_seed(1)
        mc_actions = torch.distributions.Categorical(probs=probs.unsqueeze(1).expand(-1, K, -1, -1)).sample()
        with torch.no_grad():
            errors.append((mc_coalition_q(q, state, actions, mc_actions, coalitions) - exact).abs().mean().item())
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.02 * exact.abs().mean().item()


@pytest.mark.parametrize("continuous,repeats", [(False, False), (False, True), (True, False), (True, True)])
def test_monte_carlo_pass_equals_the_critic_on_each_mixed_joint_action(continuous, repeats):
    """The batched pass (the first layer by its linearity in the actions, chunks of samples) is
    exactly (1/K) sum_k Q(s, a_C, a^k_-C) evaluated by the critic's own forward, for every
    coalition; with `repeats`, most draws repeat the taken actions."""
    import cleanmarl.cora_mappo_continuous as cont

    n, S, B, K, A, D = 5, 4, 7, 3, 4, 2
    torch.manual_seed(3)
    state = torch.randn(B, S, dtype=torch.float64)
    if continuous:
        q = cont.QNet(S, n, D, hidden=16).double()
        actions, mc_actions = torch.randn(B, n, D, dtype=torch.float64), torch.randn(B, K, n, D, dtype=torch.float64)
        fn = cont.mc_coalition_q
    else:
        q = QNet(S, n, A, hidden=16).double()
        actions, mc_actions = torch.randint(0, A, (B, n)), torch.randint(0, A, (B, K, n))
        fn = mc_coalition_q
    if repeats:
        repeat = (torch.rand(B, K, n) < 0.7).view(B, K, n, *([1] if continuous else []))
        mc_actions = torch.where(repeat, actions[:, None], mc_actions)
    coalitions = all_coalitions(n)
    inside = coalitions.view(1, 1, -1, n, *([1] if continuous else []))  # [1, 1, m, n(, 1)]
    joint = torch.where(inside, actions[:, None, None], mc_actions[:, :, None])  # [B, K, m, n(, D)]
    with torch.no_grad():
        direct = q(state[:, None, None].expand(-1, K, len(coalitions), -1), joint).mean(1)  # [B, m]
        batched = fn(q, state, actions, mc_actions, coalitions, rows_per_chunk=200)  # several chunks
    torch.testing.assert_close(batched, direct, rtol=0, atol=1e-10)


@pytest.mark.parametrize("continuous", [False, True])
def test_monte_carlo_pass_in_float32_is_the_critic_to_float32_rounding(continuous):
    """The pass evaluates tanh as 2 sigmoid(2x) - 1 with the constants folded into its GEMMs, and
    reuses its buffers between calls: in float32 it stays as close to the critic's exact (float64)
    value as the critic's own float32 forward does (within 4x its error, and 1e-5 absolute), call
    after call, for chunks of one and of several samples."""
    import cleanmarl.cora_mappo_continuous as cont

    n, S, B, K, A, D = 4, 6, 40, 8, 5, 2
    torch.manual_seed(4)
    state = torch.randn(B, S)
    if continuous:
        q = cont.QNet(S, n, D, hidden=64)
        actions, mc_actions, fn = torch.randn(B, n, D), torch.randn(B, K, n, D), cont.mc_coalition_q
    else:
        q = QNet(S, n, A, hidden=64)
        actions, mc_actions, fn = torch.randint(0, A, (B, n)), torch.randint(0, A, (B, K, n)), mc_coalition_q
    with torch.no_grad():  # larger weights than at initialisation, so that the tanh saturate too
        for p in q.parameters():
            p.mul_(3.0)
    coalitions = all_coalitions(n)
    inside = coalitions.view(1, 1, -1, n, *([1] if continuous else []))
    joint = torch.where(inside, actions[:, None, None], mc_actions[:, :, None])  # [B, K, m, n(, D)]
    states = state[:, None, None].expand(-1, K, len(coalitions), -1)
    with torch.no_grad():
        exact = copy.deepcopy(q).double()(states.double(), joint.double() if continuous else joint).mean(1)
        forward_error = (q(states, joint).mean(1).double() - exact).abs().max().item()
        for rows_per_chunk in (8192, 8192, K * len(coalitions), 3 * K * len(coalitions)):
            error = (fn(q, state, actions, mc_actions, coalitions, rows_per_chunk=rows_per_chunk).double() - exact).abs().max().item()
            assert error <= max(4 * forward_error, 1e-6) and error <= 1e-5, (rows_per_chunk, error, forward_error)


@pytest.mark.parametrize("flags", [["--critic", "mc"], ["--critic", "quadratic"], ["--num-coalitions", "100"],
                                   ["--coalition-sets", "4"]])
def test_cora_runs_on_a_matrix_game(flags, tmp_path):
    test_scripts.test_script_runs_and_logs(CORA, "matrix:team", tmp_path, extra=flags)


def test_cora_runs_on_vmas(tmp_path):
    test_scripts.test_script_runs_and_logs(CORA, "vmas:navigation,max_steps=20,n_agents=3", tmp_path, extra=["--mc-samples", "4"])


def test_quadratic_critic_gathered_forward_matches_the_full_form():
    torch.manual_seed(0)
    q = QuadraticQ(6, 4, 5, hidden=16).double()
    state, actions = torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 5, (7, 4))
    full = q.values(state, torch.nn.functional.one_hot(actions, 5).double())
    torch.testing.assert_close(q(state, actions), full)


CORA_CONT = ROOT / "cleanmarl" / "cora_mappo_continuous.py"


def test_continuous_quadratic_critic_uses_the_policy_means():
    """With independent Gaussian policies, E[Q(s, a_C, a_-C)] of the quadratic critic is Q at the
    means of the agents outside C (no within-agent square terms): compare with 200k samples."""
    from cleanmarl.cora_mappo_continuous import QuadraticQ as QuadraticQCont

    torch.manual_seed(0)
    n, D, S = 3, 2, 4
    q = QuadraticQCont(S, n, D, hidden=16).double()
    state = torch.randn(1, S, dtype=torch.float64)
    actions = torch.randn(1, n, D, dtype=torch.float64)
    policy = torch.distributions.Normal(torch.randn(1, n, D, dtype=torch.float64), torch.full((1, n, D), 0.7, dtype=torch.float64))
    coalitions = all_coalitions(n)
    closed = q.coalition_q(state, actions, policy, coalitions)  # [1, m]
    draws = policy.sample((200_000,))[:, 0]  # [K, n, D]
    M = coalitions.double()[:, None, :, None]  # [m, 1, n, 1]
    x = M * actions[0] + (1 - M) * draws  # [m, K, n, D]
    with torch.no_grad():
        mc = q.values(state, x.unsqueeze(0)).mean(-1).amin(0)  # [1, m]
    torch.testing.assert_close(closed, mc, atol=0.02, rtol=0)


@pytest.mark.parametrize("env_id,flags", [("diff:5agents", ["--critic", "mc"]), ("diff:2agents", ["--critic", "quadratic", "--allocation", "equal",
                                                                           "--coalition-values", "oracle", "--grand-advantage", "q"]),
                                          ("vmas:give_way,max_steps=20", ["--mc-samples", "4"])])
def test_cora_continuous_runs(env_id, flags, tmp_path):
    test_scripts.test_script_runs_and_logs(CORA_CONT, env_id, tmp_path, extra=flags)


def test_stag_hunt_rewards():
    """matrix:stag-NxA pays by the number k of agents on action 0: 5 (k=0), -10 (k=1), 5 (1<k<n), 10 (k=n)."""
    from cleanmarl.envs import make_env

    for n, A in ((3, 3), (4, 2)):
        joint = torch.tensor(list(itertools.product(range(A), repeat=n)))
        env = make_env(f"matrix:stag-{n}x{A}", len(joint))
        env.reset()
        k = (joint == 0).sum(1)
        expected = torch.where(k == 0, 5.0, torch.where(k == 1, -10.0, torch.where(k == n, 10.0, 5.0)))
        torch.testing.assert_close(env.step(joint).reward, expected)
        assert env.spec.optimal_return == 10.0 and env.spec.n_agents == n and env.spec.n_actions == A


def test_cora_with_every_coalition_reaches_the_stag_optimum(tmp_path):
    """Three-agent stag hunt (matrix:stag): a lone hunter is punished (-10), all hunting pays 10,
    all hare 5. With every proper coalition, CORA-MAPPO reaches the global optimum in 20k steps.
    Measured on seed 1 (greedy / final training return): CORA 10 / 10.0, the untrained policy
    (learning rate 0) 5 / -1.4. MAPPO also scores 10 / 10.0 here, so this guards the whole pipeline
    against regressions; the claim that CORA beats MAPPO is test_cora_beats_mappo_in_both_arrangements_on_multi_peak."""
    import json

    from tests.test_scripts import only_run_dir, run, scalars

    r = run(CORA, "--env-id", "matrix:stag", "--seed", "1", "--total-timesteps", "20000", "--num-coalitions", "6",
            "--save-model", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((only_run_dir(tmp_path) / "eval.json").read_text())
    assert result["eval_return_mean"] == pytest.approx(result["optimal_return"]) == pytest.approx(10.0)
    assert scalars(only_run_dir(tmp_path), "charts/episodic_return")[-1][1] >= 9.5  # untrained: -1.4


def test_the_violation_diagnostic_leaves_training_unchanged(tmp_path):
    """core/violation_ratio draws its own Monte-Carlo samples; the training must not see them."""
    losses = []
    for samples in ("0", "64"):
        cwd = tmp_path / samples
        cwd.mkdir()
        r = test_scripts.run(CORA, "--env-id", "matrix:team", "--total-timesteps", "400", "--num-envs", "4",
                             "--num-steps", "50", "--update-epochs", "2", "--violation-samples", samples, cwd=cwd)
        assert r.returncode == 0, r.stderr
        losses.append(test_scripts.scalars(test_scripts.only_run_dir(cwd), "losses/policy_loss"))
    assert len(losses[0]) == 2 and losses[0] == losses[1]


# ---- Alg. 1 as written: actors per agent, Q critics that track the policy, measured credit ------
def test_true_coalition_adv_by_hand():
    """Two agents, one state, payoff R[a1, a2]: A_{1} = sum_b pi2(b) R[a1, b] - E_pi[R], and
    A_{2} likewise (hand-computed), from the matrix game's own reward_of; two samples with
    different actions and policies, coalitions shared or given per sample."""
    from cleanmarl.cora_mappo import true_coalition_adv
    from cleanmarl.envs import make_env

    env = make_env("matrix:climbing", 1)
    R = torch.tensor([[11.0, -30.0, 0.0], [-30.0, 7.0, 6.0], [0.0, 0.0, 5.0]])
    p1, p2 = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.1, 0.6, 0.3])
    mean = p1 @ R @ p2  # E_pi[R] = 0.5*(1.1-18+0) + 0.3*(-3+4.2+1.8) + 0.2*(0+0+1.5)
    assert mean.item() == pytest.approx(0.5 * -16.9 + 0.3 * 3.0 + 0.2 * 1.5)
    actions = torch.tensor([[1, 2], [0, 0]])
    probs = torch.stack([torch.stack([p1, p2]), torch.stack([p2, p1])])  # sample 1 swaps the policies
    mean2 = p2 @ R @ p1
    expected = torch.stack([torch.stack([R[1] @ p2 - mean, p1 @ R[:, 2] - mean]),  # coalitions {1}, {2}
                            torch.stack([R[0] @ p1 - mean2, p2 @ R[:, 0] - mean2])])
    shared = torch.tensor([[True, False], [False, True]])
    torch.testing.assert_close(true_coalition_adv(env.reward_of, torch.ones(2, 1), actions, probs, shared), expected)
    per_sample = torch.stack([shared, shared.flip(0)])  # sample 1 lists {2} first
    torch.testing.assert_close(true_coalition_adv(env.reward_of, torch.ones(2, 1), actions, probs, per_sample),
                               torch.stack([expected[0], expected[1].flip(0)]))


def test_true_coalition_adv_continuous_against_a_linear_reward():
    """r(x) = sum_i c_i x_i: E[r | x_C] - E[r] = sum_{i in C} c_i (x_i - mu_i), exactly; the
    Monte-Carlo truth of the continuous scripts must land within its sampling error."""
    from cleanmarl.cora_mappo_continuous import true_coalition_adv

    torch.manual_seed(0)
    c = torch.tensor([1.0, -2.0, 0.5])
    reward_of = lambda state, x: (x[..., 0] * c).sum(-1)  # noqa: E731
    mu, x = torch.randn(4, 3, 1), torch.randn(4, 3, 1)
    policy = torch.distributions.Normal(mu, torch.full_like(mu, 0.3))
    coalitions = all_coalitions(3)
    got = true_coalition_adv(reward_of, torch.zeros(4, 1), x, policy, coalitions, draws=20000)
    expected = (coalitions.float() * c) @ (x - mu)[..., 0].T  # [m, B]
    torch.testing.assert_close(got, expected.T, atol=0.03, rtol=0)
    per_sample = torch.stack([coalitions.roll(b, 0) for b in range(4)])  # [B, m, n]
    got = true_coalition_adv(reward_of, torch.zeros(4, 1), x, policy, per_sample, draws=20000)
    expected = torch.stack([expected[:, b].roll(b, 0) for b in range(4)])
    torch.testing.assert_close(got, expected, atol=0.03, rtol=0)


@pytest.mark.parametrize("env_id,actions", [("matrix:peaks5", torch.tensor([[0, 1, 2], [4, 4, 4], [3, 0, 1]])),
                                            ("diff:2agents", torch.tensor([[[0.5], [-1.0]], [[7.0], [2.0]], [[-3.0], [-6.0]]]))])
def test_reward_of_is_the_reward_step_pays(env_id, actions):
    from cleanmarl.envs import make_env

    env = make_env(env_id, 3, seed=4)
    step = env.reset()
    for _ in range(2):  # at two different states of the matrix game
        expected = env.reward_of(step.state, actions)
        step = env.step(actions)
        torch.testing.assert_close(step.reward, expected)


def test_per_agent_actors_are_one_module_with_independent_agents():
    """--no-share-actor: each agent's policy is its own network, evaluated batched, and the form is
    the one happo.py's actors use."""
    import inspect

    from cleanmarl import cora_mappo, happo, mappo

    assert inspect.getsource(mappo.Actors.forward) == inspect.getsource(happo.Actors.forward)
    assert inspect.getsource(cora_mappo.Actors) == inspect.getsource(mappo.Actors)
    torch.manual_seed(0)
    actors = mappo.Actors(obs_dim=4, n_agents=3, n_actions=5, hidden=8)
    obs, avail = torch.randn(6, 3, 4), torch.ones(6, 3, 5, dtype=torch.bool)
    logits = actors(obs, avail)
    for k in range(3):
        torch.testing.assert_close(logits[:, k], actors.agents[k](obs[:, k]))
    logits[:, 1].sum().backward()  # agent 1's output moves agent 1's weights only
    for k, net in enumerate(actors.agents):
        assert all((p.grad is not None and p.grad.abs().sum() > 0) == (k == 1) for p in net.parameters())


def test_share_actor_defaults():
    """CORA follows Alg. 1 l. 1 (an actor per agent); the MAPPO family shares one, as its paper."""
    from cleanmarl import (cora_mappo, cora_mappo_continuous, ilvf_ppo, mappo, mappo_continuous, optimistic_mappo,
                           optimistic_mappo_continuous)

    for module in (mappo, mappo_continuous, optimistic_mappo, optimistic_mappo_continuous, ilvf_ppo):
        assert module.Args().share_actor is True, module.__name__
    for module in (cora_mappo, cora_mappo_continuous):
        assert module.Args().share_actor is False, module.__name__


def test_q_critics_track_the_policy_on_multi_peak(tmp_path):
    """With the Q critics' own schedule (50 epochs a rollout, constant rate), the estimated
    coalition advantages follow the exact ones on matrix:peaks5 (seed 1): core/adv_corr averages
    >= 0.8 over updates 41-50 (at the old schedule, 10 annealed epochs interleaved with PPO, it
    measured 0.5 over updates 26-50). core/equal_split_frac is a share."""
    r = test_scripts.run(CORA, "--env-id", "matrix:peaks5", "--seed", "1", "--total-timesteps", "20000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = test_scripts.only_run_dir(tmp_path)
    corr = [v for _, v in test_scripts.scalars(run_dir, "core/adv_corr")]
    assert len(corr) == 50 and np.mean(corr[40:]) >= 0.8, corr
    frac = [v for _, v in test_scripts.scalars(run_dir, "core/equal_split_frac")]
    assert len(frac) == 50 and all(0.0 <= f <= 1.0 for f in frac) and min(frac) < 1.0


def test_cora_beats_mappo_in_both_arrangements_on_multi_peak(tmp_path):
    """matrix:peaks5 (3 agents x 5 actions, 10 steps, optimum 200), seed 5, 20k steps, defaults.
    Measured: CORA-MAPPO greedy 132.9 / final training return 105.3 (105.1 before the Monte-Carlo
    pass's float32 rounding changed with issue 26); MAPPO with a shared actor
    40.4 / -12.8; MAPPO with an actor per agent 37.2 / 1.0; the untrained policy -51.0 / -41.9.
    CORA must clear both MAPPOs by a wide margin, greedy and in training."""
    import json

    def result(*flags):
        cwd = tmp_path / str(len(list(tmp_path.iterdir())))
        cwd.mkdir()
        r = test_scripts.run(*flags, "--env-id", "matrix:peaks5", "--seed", "5", "--total-timesteps", "20000",
                             "--save-model", cwd=cwd)
        assert r.returncode == 0, r.stderr
        run_dir = test_scripts.only_run_dir(cwd)
        greedy = json.loads((run_dir / "eval.json").read_text())["eval_return_mean"]
        return greedy, test_scripts.scalars(run_dir, "charts/episodic_return")[-1][1]

    cora = result(CORA)
    for mappo in (result(MAPPO), result(MAPPO, "--no-share-actor")):
        assert cora[0] >= mappo[0] + 50, (cora, mappo)  # greedy
        assert cora[1] >= mappo[1] + 50, (cora, mappo)  # training return
    assert cora[0] >= 110 and cora[1] >= 80, cora


def test_a_costly_monte_carlo_pass_is_announced_before_the_run(tmp_path):
    """A run whose Monte-Carlo pass will take longer than MC_NOTE_SECONDS per update says so in one
    line before training, with its estimate and the cheaper flags; a cheap run says nothing."""
    import subprocess
    import sys

    from cleanmarl.cora_mappo import MC_EVAL_SECONDS

    flags = ["--env-id", "vmas:navigation,n_agents=8", "--num-envs", "64", "--mc-samples", "64", "--threads", "1",
             "--total-timesteps", "6400"]  # one update, should the note be missing
    proc = subprocess.Popen([sys.executable, str(CORA), *flags], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        note = next(line for line in proc.stderr if line.startswith("note: "))  # then the run is stopped
    finally:
        proc.kill()
        proc.wait()
    seconds = 2 * 64 * 100 * 127 * 64 * MC_EVAL_SECONDS  # samples x coalitions x draws x 2 critics
    assert f"6400 samples x 127 coalitions x 64 draws x 2 times per update: about {seconds:.0f} s" in note
    assert "--critic quadratic" in note and "--mc-samples 16" in note and "--num-coalitions 15" in note
    r = test_scripts.run(CORA, "--env-id", "matrix:team", "--total-timesteps", "400", cwd=tmp_path)
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr


def test_q_critic_schedule_counts_adam_steps_and_can_stop_early(tmp_path):
    """--q-epochs defaults to ceil(Q_STEPS / --num-minibatches) (50 epochs of the full batch, 13 of
    4 minibatches), is logged as core/q_epochs and kept in the run's hyperparameters; --q-stop ends
    an update's Q epochs once --q-patience epochs lowered the loss by less than that fraction."""
    from cleanmarl.cora_mappo import Q_STEPS

    def epochs(*flags):
        cwd = tmp_path / str(len(list(tmp_path.iterdir())))
        cwd.mkdir()
        r = test_scripts.run(CORA, "--env-id", "matrix:team", "--total-timesteps", "800", "--violation-samples", "0",
                             "--mc-samples", "2", *flags, cwd=cwd)
        assert r.returncode == 0, r.stderr
        return [v for _, v in test_scripts.scalars(test_scripts.only_run_dir(cwd), "core/q_epochs")]

    assert Q_STEPS == 50
    assert epochs() == [50] * 2  # the matrix row: the full batch
    assert epochs("--num-minibatches", "4") == [13] * 2
    assert epochs("--num-minibatches", "4", "--q-epochs", "7") == [7] * 2
    stopped = epochs("--q-stop", "0.9", "--q-patience", "1")  # any epoch that fails to cut the loss by 90 % ends it
    assert all(2 <= e < 50 for e in stopped), stopped


def test_the_stage_benchmark_tabulates_every_contender(tmp_path, capsys, monkeypatch):
    """docs/cora_speed.py --stages: each contender's SPS and per-update stages from its run's tags,
    CORA against its base, with and without the Monte-Carlo pass (a tiny run of each)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cora_speed", ROOT / "docs" / "cora_speed.py")
    cora_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cora_speed)
    monkeypatch.setitem(cora_speed.STAGE_TASKS, "matrix:team", 800)  # 2 updates of 400 samples
    cora_speed.stage_table(["matrix:team"], rounds=1)
    rows = {line.split("  ")[1].strip(): line.split()[-15:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("  ") and line.split()[0] in ("MAPPO", "HAPPO", "CORA-MAPPO", "CORA-HAPPO")}
    assert set(rows) == {"MAPPO", "HAPPO", "CORA-MAPPO MC", "CORA-HAPPO MC", "CORA-MAPPO QC"}, rows
    for name, cells in rows.items():
        stages = dict(zip(cora_speed.STAGES, map(float, cells[2:11])))  # after SPS and its ratio
        assert stages["time/iteration_ms"] > 0 and stages["time/rollout_ms"] > 0, (name, stages)
        assert np.isnan(stages["core/coalition_ms"]) == (not name.startswith("CORA")), (name, stages)


# ---- issue 27's controls: the equal split, oracle coalition values, Sec. III-A's A_N ----------
def test_equal_allocation_is_the_grand_advantage_split_and_core_is_eq_24():
    from cleanmarl.cora_mappo import allocate
    coalitions, v, AN = random_problem(4, 32, seed=3)
    alloc, eps = allocate(coalitions, v, AN, 1e-2, "equal")
    assert torch.equal(alloc, AN[:, None].expand(-1, 4) / 4) and torch.equal(eps, torch.zeros_like(AN))
    core, core_eps = core_allocation(coalitions, v, AN, 1e-2)
    got, got_eps = allocate(coalitions, v, AN, 1e-2, "core")
    assert torch.equal(got, core) and torch.equal(got_eps, core_eps)


def test_grand_q_advantage_is_min_q_minus_v_by_hand():
    from cleanmarl.cora_mappo import RunningMeanStd, grand_q_advantage
    q_taken = torch.tensor([[1.0, 5.0, -2.0], [3.0, 2.0, -1.0]])  # [2 critics, 3 samples]
    value = torch.tensor([0.5, 1.0, 0.0])
    torch.testing.assert_close(grand_q_advantage(q_taken, value), torch.tensor([0.5, 1.0, -2.0]))
    rms = RunningMeanStd()
    rms.mean.fill_(1.0), rms.var.fill_(4.0)  # critics in normalized units: Q = 2 q + 1
    torch.testing.assert_close(grand_q_advantage(q_taken, value, rms), torch.tensor([2.5, 4.0, -3.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("control", [("--allocation", "equal"), ("--coalition-values", "oracle"),
                                     ("--grand-advantage", "q")])
def test_each_control_changes_only_its_own_step(control, tmp_path):
    """One control against the paper's CORA, same seed: the first rollout, its Q-critic regression
    and (except under the oracle) the coalition values' fit to the truth are the same; the credit
    the actors get is not. Under the oracle the coalition values are the truth (adv_corr 1)."""
    logs = {}
    for name, flags in (("core", ()), ("control", control)):
        cwd = tmp_path / name
        cwd.mkdir()
        r = test_scripts.run(CORA, "--env-id", "matrix:peaks5", "--total-timesteps", "800", "--update-epochs", "2",
                             *flags, cwd=cwd)
        assert r.returncode == 0, r.stderr
        run_dir = test_scripts.only_run_dir(cwd)
        logs[name] = {tag: test_scripts.scalars(run_dir, tag) for tag in
                      ("losses/q_loss", "core/adv_corr", "core/equal_split_frac", "losses/policy_loss")}
    core, ctrl = logs["core"], logs["control"]
    assert core["losses/q_loss"][0] == ctrl["losses/q_loss"][0]
    assert core["losses/policy_loss"][0] != ctrl["losses/policy_loss"][0]
    if control[1] == "oracle":
        assert ctrl["core/adv_corr"][0][1] == pytest.approx(1.0, abs=1e-5)
    else:
        assert core["core/adv_corr"][0] == ctrl["core/adv_corr"][0]
    if control[1] == "equal":
        assert [v for _, v in ctrl["core/equal_split_frac"]] == [1.0, 1.0]


def test_the_oracle_control_needs_an_env_that_knows_its_coalition_values(tmp_path):
    r = test_scripts.run(CORA, "--env-id", "vmas:give_way", "--num-envs", "2", "--coalition-values", "oracle",
                         cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--coalition-values learned" in r.stderr
