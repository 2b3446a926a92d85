"""docs/plot_results.py: the aggregation math against hand-computed values on synthetic logs."""

import json
import math
import os
import sys

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs"))
import plot_results as pr  # noqa: E402

T_975_2 = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def write_run(root, env_id, exp, seed, points, tag=pr.RETURN_TAG, extra=None, evaluation=None):
    path = os.path.join(root, f"{env_id}__{exp}__{seed}__1700000000")
    writer = SummaryWriter(path)
    for step, value in points:
        writer.add_scalar(tag, value, step)
        writer.add_scalar("losses/value_loss", 0.0, step)
    for tag2, pts in (extra or {}).items():
        for step, value in pts:
            writer.add_scalar(tag2, value, step)
    writer.close()
    if evaluation is not None:
        with open(os.path.join(path, "eval.json"), "w") as f:
            json.dump(evaluation, f)
    return path


def test_parse_run_name():
    assert pr.parse_run_name("matrix:team__cora_mappo_mc__3__1732000000") == ("matrix:team", "cora_mappo_mc", 3)
    assert pr.parse_run_name("vmas:give_way,n_agents=2__mappo__1__17") == ("vmas:give_way,n_agents=2", "mappo", 1)
    assert pr.parse_run_name("not_a_run") is None


def test_mean_ci_by_hand():
    mean, lo, hi = pr.mean_ci(np.array([[1.0], [2.0], [3.0]]))
    half = T_975_2 * 1.0 / math.sqrt(3)  # sd = 1
    assert mean[0] == pytest.approx(2.0)
    assert lo[0] == pytest.approx(2.0 - half) and hi[0] == pytest.approx(2.0 + half)
    mean, lo, hi = pr.mean_ci(np.array([[5.0]]))  # one seed: no interval
    assert mean[0] == 5.0 and math.isnan(lo[0]) and math.isnan(hi[0])


def test_interpolation_auc_final_by_hand():
    runs = [pr.Run("e", "a", 1, pr.RETURN_TAG, np.array([0.0, 100.0]), np.array([0.0, 10.0])),
            pr.Run("e", "a", 2, pr.RETURN_TAG, np.array([20.0, 60.0, 120.0]), np.array([4.0, 4.0, 0.0]))]
    grid = pr.common_grid(runs, 5)  # the range both cover: 20 .. 100
    np.testing.assert_allclose(grid, [20, 40, 60, 80, 100])
    curves = pr.interpolate(runs, grid)
    np.testing.assert_allclose(curves[0], [2, 4, 6, 8, 10])
    np.testing.assert_allclose(curves[1], [4, 4, 4, 4 - 4 / 3, 4 - 8 / 3])  # 60 -> 120 falls 4 by 4/60 a step
    # trapezoids of width 20 over 20..100, divided by 80: run 1 averages 6
    area2 = 20 * (4 + 4) / 2 * 2 + 20 * (4 + 8 / 3) / 2 + 20 * (8 / 3 + 4 / 3) / 2
    np.testing.assert_allclose(pr.auc(grid, curves), [6.0, area2 / 80])
    np.testing.assert_allclose(pr.final(curves, 0.4), [9.0, (8 / 3 + 4 / 3) / 2])  # last 2 of 5 points
    np.testing.assert_allclose(pr.final(curves, 0.01), [10.0, 4 / 3])  # at least one point
    np.testing.assert_allclose(pr.late_gain(curves), [10 - 8, 4 / 3 - 8 / 3])  # last point minus the one before
    ten = np.arange(10.0)[None]  # fifths of 2 points: (8 + 9) / 2 - (6 + 7) / 2
    np.testing.assert_allclose(pr.late_gain(ten), [2.0])


def test_summary_plots_and_table_from_event_files(tmp_path):
    runs_dir = str(tmp_path / "runs")
    # algorithm A: seeds with linear curves ending at 9, 10, 11; B: flat at 1, 2, 3
    for seed, end in zip((1, 2, 3), (9.0, 10.0, 11.0)):
        write_run(runs_dir, "matrix:team", "algo_a", seed, [(s, end * s / 100) for s in range(0, 101, 10)],
                  evaluation={"eval_return_mean": end, "optimal_return": 12.0})
        write_run(runs_dir, "matrix:team", "algo_b", seed, [(s, float(seed)) for s in range(0, 101, 10)])
    # a run with a win rate: the win rate is its curve
    write_run(runs_dir, "smax:3m", "algo_a", 1, [(0, 5.0), (100, 6.0)],
              extra={pr.WIN_TAG: [(0, 0.0), (100, 1.0)]}, evaluation={"eval_return_mean": 1.0, "eval_win_rate": 0.5})
    out = str(tmp_path / "out")
    pr.main([runs_dir, "--out", out, "--grid", "11", "--final-frac", "0.05"])
    summary = json.load(open(os.path.join(out, "results.json")))
    a, b = summary["matrix:team"]["algo_a"], summary["matrix:team"]["algo_b"]
    assert a["seeds"] == [1, 2, 3]
    np.testing.assert_allclose(a["grid"], np.arange(0, 101, 10))
    np.testing.assert_allclose(a["mean"], np.arange(0, 101, 10) / 10)  # mean slope 10/100
    half = T_975_2 / math.sqrt(3)  # final values 9, 10, 11: sd 1
    assert a["final"]["mean"] == pytest.approx(10.0)
    assert a["final"]["hi"] - a["final"]["mean"] == pytest.approx(half)
    assert a["auc"]["mean"] == pytest.approx(5.0)  # a line from 0 to 10 averages 5
    assert a["auc"]["hi"] - 5.0 == pytest.approx(half / 2)  # per-seed AUCs 4.5, 5, 5.5
    assert a["eval"]["mean"] == pytest.approx(10.0) and a["eval"]["n"] == 3
    assert a["late_gain"]["mean"] == pytest.approx(2.0) and b["late_gain"]["mean"] == pytest.approx(0.0)  # (9.5 - 7.5), flat
    ratios = np.array([9.0, 10.0, 11.0]) / 12.0  # eval / optimum per seed
    assert a["eval_ratio"]["mean"] == pytest.approx(ratios.mean())
    assert a["eval_ratio"]["hi"] - ratios.mean() == pytest.approx(half / 12)
    assert "eval_ratio" not in b  # no eval.json
    assert b["final"]["mean"] == pytest.approx(2.0) and b["auc"]["mean"] == pytest.approx(2.0)
    np.testing.assert_allclose(b["lo"], 2.0 - half)
    win = summary["smax:3m"]["algo_a"]
    assert win["metric"] == pr.WIN_TAG and win["final"]["mean"] == pytest.approx(1.0)
    assert math.isnan(win["final"]["lo"]) and win["eval"]["mean"] == pytest.approx(0.5)
    table = open(os.path.join(out, "results.md")).read()
    assert "| algo_a | 3 | 10 [" in table and "| algo_b | 3 | 2 [" in table and "| 0.833 [" in table
    assert table.index("| algo_a |") < table.index("| algo_b |")  # sorted by final
    assert "optimum, mean over seeds: 12" in table
    assert "| algo_b | 2 [" in table and "| algo_a | 10 [" in table  # the overview: final by env
    for name in ("matrix_team.png", "smax_3m.png"):
        png = os.path.join(out, name)
        assert os.path.getsize(png) > 5000 and open(png, "rb").read(4) == b"\x89PNG"


def test_no_runs_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no runs"):
        pr.main([str(tmp_path), "--out", str(tmp_path / "o")])


def test_parity_criterion_by_hand_and_its_csv_folder_replots_the_same(tmp_path):
    """docs/plot_parity.py on synthetic runs: BenchMARL flat at 0.9; our default arm at 1.0 (>= the
    peer at every grid point past 0.5M: met), the full-batch arm at 0.5 (at none: not met); the
    final means by hand; then the CSV folder it writes, re-plotted alone, gives the same numbers."""
    import plot_parity as pp

    steps = np.arange(0, 1_000_001, 50_000)
    for seed in (1, 2):
        for exp, value in (("mappo_continuous", 1.0), ("mappo_continuous_mb1", 0.5)):
            write_run(tmp_path / "runs", pp.NAV_ID, exp, seed, [(int(s), value + 0.01 * seed) for s in steps],
                      extra={"charts/SPS": [(1_000_000, 5000.0 * seed)], "eval/episodic_return": [(1_000_000, 2.0)]})
        os.makedirs(tmp_path / "parity", exist_ok=True)
        with open(tmp_path / "parity" / f"benchmarl_navigation_{seed}.csv", "w") as f:
            f.write("frames,episode_reward_mean,fps\n" + "".join(f"{s},0.9,600\n" for s in steps))
        write_run(tmp_path / "runs", "smax:2s3z", "mappo", seed, [(int(s), 0.5) for s in steps], tag="charts/win_rate",
                  extra={"eval/win_rate": [(500_000, 0.7), (1_000_000, 0.9)]})
    pp.main([str(tmp_path), "--out", str(tmp_path / "out")])
    first = json.load(open(tmp_path / "out" / "results.json"))
    nav = first["vmas_navigation"]
    ours, full = (nav[label] for _, label in pp.NAV_ARMS)
    assert ours["final"] == pytest.approx(1.015) and full["final"] == pytest.approx(0.515)
    assert ours["sps"] == pytest.approx(7500.0)
    past = int((np.linspace(0, 1_000_000, 100) > 500_000).sum())
    assert ours["criterion"] == {"grid_points_past_0.5M": past, "ours_at_least_peer": past, "met": True,
                                 "window_mean_minus_peer": [0.115] * 5, "windows_at_least_peer": 5}
    assert full["criterion"] == {"grid_points_past_0.5M": past, "ours_at_least_peer": 0, "met": False,
                                 "window_mean_minus_peer": [-0.385] * 5, "windows_at_least_peer": 0}
    assert ours["steps_to_90pct_of_peer_final"] == 0 and full["steps_to_90pct_of_peer_final"] is None
    assert first["smax_2s3z__mappo"]["eval_win_rate_at_the_end"] == [0.9, 0.9]
    assert sorted(os.listdir(tmp_path / "out" / "benchmarl")) == ["benchmarl_navigation_1.csv", "benchmarl_navigation_2.csv"]
    pp.main([str(tmp_path / "out"), "--out", str(tmp_path / "again")])
    assert json.load(open(tmp_path / "again" / "results.json")) == first


def test_credit_diagnostics_early_late_and_relative_spread_by_hand(tmp_path):
    """Diagnostics average the first quarter of the updates (early) and the rest (late), per seed;
    core/alloc_spread_rel is core/alloc_spread / core/alloc_std update by update."""
    runs_dir = str(tmp_path / "runs")
    steps = range(0, 80, 10)  # 8 updates: early = the first 2, late = the other 6
    spread = [2.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0]
    std = [4.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    for seed in (1, 2):
        write_run(runs_dir, "matrix:team", "cora", seed, [(s, 1.0) for s in steps],
                  extra={"core/alloc_spread": list(zip(steps, spread)), "core/alloc_std": list(zip(steps, std)),
                         "core/equal_split_frac": [(s, 0.5 * seed) for s in steps]})
    out = str(tmp_path / "out")
    pr.main([runs_dir, "--out", out, "--grid", "8"])
    entry = json.load(open(os.path.join(out, "results.json")))["matrix:team"]["cora"]
    assert entry["core/alloc_spread"]["early"]["mean"] == pytest.approx(3.0)  # (2 + 4) / 2
    assert entry["core/alloc_spread"]["late"]["mean"] == pytest.approx(8.0 / 6)
    assert entry[pr.REL_SPREAD]["early"]["mean"] == pytest.approx(1.25)  # (2/4 + 4/2) / 2, not (3) / (3)
    assert entry[pr.REL_SPREAD]["late"]["mean"] == pytest.approx((5 * 0.5 + 1.5) / 6)
    assert entry["core/equal_split_frac"]["late"]["mean"] == pytest.approx(0.75)  # seeds 0.5 and 1
    assert "core/alloc_std" not in entry  # a helper for the ratio, not a column
    table = open(os.path.join(out, "results.md")).read()
    assert f"`{pr.REL_SPREAD}` early" in table


def test_compare_results_pairs_two_batches_by_seed_by_hand(tmp_path, capsys):
    """docs/compare_results.py: A - B over the seeds both ran, in the order of each file's seeds."""
    import compare_results as cr

    def write(name, algo, seeds, finals, aucs):
        path = tmp_path / name
        path.write_text(json.dumps({"e": {algo: {"seeds": seeds, "final": {"per_seed": finals}, "auc": {"per_seed": aucs}},
                                          "other_env_only": {}}}))
        return f"{path}:{algo}"

    a = write("a.json", "new", [3, 1, 2, 4], [13.0, 11.0, 12.0, 99.0], [3.0, 1.0, 2.0, 9.0])
    b = write("b.json", "old", [1, 2, 3], [10.0, 10.0, 10.0], [0.0, 0.0, 0.0])
    table = cr.main([a, b])
    row = table["e"]
    assert row["seeds"] == [1, 2, 3]  # seed 4 ran in A only
    assert row["final"]["per_seed"] == [1.0, 2.0, 3.0]
    half = T_975_2 * 1.0 / math.sqrt(3)
    assert row["final"]["mean"] == pytest.approx(2.0)
    assert (row["final"]["lo"], row["final"]["hi"]) == pytest.approx((2.0 - half, 2.0 + half))
    assert row["auc"]["mean"] == pytest.approx(2.0)
    assert "A - B over seeds 1,2,3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # a missing algorithm: one line naming the ones there, exit 2
        cr.main([a, str(tmp_path / "b.json") + ":nope"])
    assert e.value.code == 2 and "it has: old" in capsys.readouterr().err
