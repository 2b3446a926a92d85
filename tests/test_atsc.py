"""atsc: traffic-signal control on SUMO through sumo-rl: the large-grid generator and its demand
profile, the family's conformance to the env interface, rewards against their definition,
action masks, determinism, one-line errors, and MAPPO end to end."""

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cleanmarl.envs import EnvError, make_env
from cleanmarl.envs import atsc
from tests.families import installed

ROOT = Path(__file__).resolve().parents[1]


def _import_sumo():
    """The eclipse-sumo wheel's binaries, and libsumo and sumo-rl present. Neither is imported
    here: importing libsumo sets SUMO_HOME to the sumo-data wheel, and the env layer loads libsumo
    in its workers only; a broken install of either fails the tests that use it."""
    home = atsc.sumo_home()
    if not os.path.exists(os.path.join(home, "bin", "sumo")):
        raise FileNotFoundError(f"no sumo binary under SUMO_HOME {home}")
    for module in ("libsumo", "sumo_rl"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"{module} is not installed")


HAS_SUMO = installed("atsc", _import_sumo, "pip install -r requirements-atsc.txt")
needs_sumo = pytest.mark.skipif(not HAS_SUMO, reason="SUMO not installed: pip install -r requirements-atsc.txt")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Generated networks go to a fresh cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def random_actions(avail, gen):
    """Uniform over each agent's valid phases, from a seeded generator."""
    return torch.multinomial(avail.flatten(0, 1).float(), 1, generator=gen).view(avail.shape[:2])


# -- the large-grid demand and network ------------------------------------------------------------
def test_demand_profile_matches_its_formula():
    T = 3600  # peaks at T/3 (horizontal) and 2T/3 (vertical), half-width T/3, 100 + 400 veh/h
    t = np.array([0, 600, 1200, 1800, 2400, 3000, 3600])
    q = atsc.demand(t, T)
    np.testing.assert_allclose(q["horizontal"], [100, 300, 500, 300, 100, 100, 100])
    np.testing.assert_allclose(q["vertical"], [100, 100, 100, 300, 500, 300, 100])


def test_route_file_flows_follow_the_profile():
    T = 1800
    root = ET.fromstring(atsc.route_xml(T))
    flows = root.findall("flow")
    routes = atsc.grid_routes()
    assert len(flows) == (T // 300) * 4 * atsc.GRID  # 6 bins x 20 straight routes
    group = {src: g for g, pairs in routes.items() for src, _ in pairs}
    for f in flows:
        begin, end = float(f.get("begin")), float(f.get("end"))
        assert end - begin == 300
        mid = (begin + end) / 2
        peak = T / 3 if group[f.get("from")] == "horizontal" else 2 * T / 3
        expected = 100 + 400 * max(0.0, 1 - abs(mid - peak) / (T / 3))  # veh/h, written out by hand
        assert float(f.get("probability")) == pytest.approx(expected / 3600, abs=1e-6)


@needs_sumo
def test_large_grid_is_5x5_signals_with_200m_links(tmp_path):
    net_file, route_file = atsc.large_grid_files(600)
    assert str(tmp_path / "cache") in net_file  # generated into the (user) cache, not the repo
    net = ET.parse(net_file).getroot()
    signals = {j.get("id"): (float(j.get("x")), float(j.get("y")))
               for j in net.findall("junction") if j.get("type") == "traffic_light"}
    assert len(signals) == 25 and len(net.findall("tlLogic")) == 25
    xs, ys = sorted({x for x, _ in signals.values()}), sorted({y for _, y in signals.values()})
    assert len(xs) == len(ys) == 5
    np.testing.assert_allclose(np.diff(xs), 200.0)
    np.testing.assert_allclose(np.diff(ys), 200.0)
    links = [(e.get("from"), e.get("to")) for e in net.findall("edge")
             if e.get("function") != "internal" and e.get("from") in signals and e.get("to") in signals]
    assert len(links) == 2 * 2 * 5 * 4  # both directions of the 40 links between neighbours
    for a, b in links:
        assert np.hypot(*np.subtract(signals[a], signals[b])) == pytest.approx(200.0)
    # every flow enters and leaves on edges of this network
    edges = {e.get("id") for e in net.findall("edge")}
    for f in ET.parse(route_file).getroot().findall("flow"):
        assert f.get("from") in edges and f.get("to") in edges
    # cached: a second construction reuses the files
    mtime = os.path.getmtime(net_file)
    assert atsc.large_grid_files(600) == (net_file, route_file) and os.path.getmtime(net_file) == mtime


# -- the family ----------------------------------------------------------------------------------
@needs_sumo
def test_grid4x4_conformance_and_truncation():
    E, limit = 2, 10
    env = make_env("atsc:grid4x4,seconds=50", num_envs=E, seed=0)
    try:
        spec = env.spec
        assert (spec.n_agents, spec.episode_limit, spec.discrete) == (16, limit, True)
        assert spec.state_dim == spec.n_agents * spec.obs_dim and spec.agent_state_dim == spec.obs_dim
        step = env.reset()
        gen = torch.Generator().manual_seed(0)
        nonzero = False
        for t in range(1, limit + 1):
            assert step.obs.shape == (E, 16, spec.obs_dim) and step.avail_actions.shape == (E, 16, spec.n_actions)
            torch.testing.assert_close(step.state, step.obs.reshape(E, -1))  # state: the concatenation
            torch.testing.assert_close(step.agent_state, step.obs)
            step = env.step(random_actions(step.avail_actions, gen))
            assert step.agent_reward.shape == (E, 16)
            torch.testing.assert_close(step.reward, step.agent_reward.sum(-1))
            nonzero |= bool((step.agent_reward != 0).any())
            assert not step.terminated.any()  # no terminal states: the horizon is a time limit
            assert bool(step.truncated.all()) == (t == limit) and bool(step.truncated.any()) == (t == limit)
        assert nonzero
        assert step.episodes.done.all() and (step.episodes.length == limit).all()
        torch.testing.assert_close(step.final_state, step.final_obs.reshape(E, -1))
        # after the automatic reset: a new episode's first observation (no vehicle has waited yet)
        assert not torch.equal(step.obs, step.final_obs)
    finally:
        env.close()


@needs_sumo
def test_queue_reward_is_each_signals_halted_vehicles():
    """reward=queue, through TraCI in this process: agent i's reward is minus the vehicles halted on
    its incoming lanes, read here directly from SUMO."""
    env = make_env("atsc:grid4x4,seconds=150,reward=queue,backend=traci", num_envs=1, seed=0)
    try:
        step = env.reset()
        conn = env.sims[0].env.sumo
        lanes = [list(dict.fromkeys(conn.trafficlight.getControlledLanes(ts))) for ts in env.signal_ids]
        gen = torch.Generator().manual_seed(1)
        total = 0.0
        for _ in range(env.spec.episode_limit - 1):  # before the automatic reset
            step = env.step(random_actions(step.avail_actions, gen))
            halted = [-sum(conn.lane.getLastStepHaltingNumber(lane) for lane in ls) for ls in lanes]
            assert step.agent_reward[0].tolist() == halted
            total += sum(halted)
        assert total < 0  # vehicles did queue: the comparison was not trivially 0 == 0
    finally:
        env.close()


@needs_sumo
def test_masks_and_padding_on_signals_with_different_phases():
    env = make_env("atsc:cologne8,seconds=20", num_envs=1, seed=0)
    try:
        sim = env.sims[0]
        resco = Path(importlib.util.find_spec("sumo_rl").origin).parent / "nets" / "RESCO"
        net = ET.parse(resco / "cologne8" / "cologne8.net.xml").getroot()
        # green phases: no yellow and not all red (sumo-rl's rule), counted from the net file
        greens = {tl.get("id"): sum(1 for p in tl.findall("phase") if "y" not in p.get("state")
                                    and p.get("state").count("r") + p.get("state").count("s") != len(p.get("state")))
                  for tl in net.findall("tlLogic")}
        phases = [greens[ts] for ts in env.signal_ids]
        assert len(set(phases)) > 1 and env.spec.n_actions == max(phases)
        step = env.reset()
        assert step.avail_actions[0].sum(-1).tolist() == phases
        for j in range(env.spec.n_agents):
            assert bool(step.avail_actions[0, j, : phases[j]].all())
            assert not step.obs[0, j, sim.obs_sizes[j]:].any()  # zero padding beyond its own size
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            step = env.step(random_actions(step.avail_actions, gen))
            assert step.avail_actions[0].sum(-1).tolist() == phases
    finally:
        env.close()


@needs_sumo
def test_same_seed_same_trajectory_across_resets():
    """Three envs: seeds 0, 0 and 1, the same actions, 9 steps across two automatic resets of a
    4-step episode."""
    envs = [make_env("atsc:large-grid,seconds=20", num_envs=1, seed=s) for s in (0, 0, 1)]
    try:
        assert envs[0].spec.n_agents == 25
        steps = [env.reset() for env in envs]
        gen = torch.Generator().manual_seed(0)
        traces = [[], [], []]
        for _ in range(9):
            actions = random_actions(steps[0].avail_actions, gen)
            steps = [env.step(actions) for env in envs]
            for trace, step in zip(traces, steps):
                trace.append(torch.cat([step.obs.flatten(), step.agent_reward.flatten()]))
        same, other = torch.stack(traces[1]), torch.stack(traces[2])
        torch.testing.assert_close(torch.stack(traces[0]), same, rtol=0, atol=0)
        assert not torch.equal(same, other)
    finally:
        for env in envs:
            env.close()


# -- one-line errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("env_id, words", [
    ("atsc:nowhere", "valid: grid4x4, arterial4x4"),
    ("atsc:grid4x4,speed=3", "unknown options"),
    ("atsc:grid4x4,delta_time=2", "delta_time"),
    ("atsc:grid4x4,reward=fun", "valid: diff-waiting-time"),
    ("atsc:grid4x4,backend=gpu", "libsumo or traci"),
])
def test_bad_ids_are_one_line(env_id, words):
    with pytest.raises(EnvError) as e:
        make_env(env_id)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_missing_packages_name_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "sumo", None)  # `import sumo` now fails as if absent
    monkeypatch.delenv("SUMO_HOME", raising=False)
    with pytest.raises(EnvError, match="pip install -r requirements-atsc.txt"):
        make_env("atsc:grid4x4")
    monkeypatch.undo()
    real = importlib.util.find_spec
    for missing in ("sumo_rl", "libsumo"):
        monkeypatch.setattr(atsc.importlib.util, "find_spec", lambda name, *a, m=missing: None if name == m else real(name, *a))
        backend = ",backend=libsumo" if missing == "libsumo" else ""
        with pytest.raises(EnvError, match="pip install -r requirements-atsc.txt") as e:
            make_env(f"atsc:grid4x4{backend}")
        assert "\n" not in str(e.value)


def test_mappo_unknown_net_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "cleanmarl" / "mappo.py"), "--env-id", "atsc:nowhere"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown ATSC network" in proc.stderr


# -- end to end ----------------------------------------------------------------------------------
@needs_sumo
def test_mappo_smoke_on_grid4x4(tmp_path):
    """Smoke test (runs and logs; no learning claim): 200 env-steps of MAPPO: 2 envs x 50-step rollouts over 20-step (100 s) episodes."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cleanmarl" / "mappo.py"), "--env-id", "atsc:grid4x4,seconds=100",
         "--num-envs", "2", "--num-steps", "50", "--total-timesteps", "200", "--update-epochs", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    returns = [e.value for e in acc.Scalars("charts/episodic_return")]
    lengths = [e.value for e in acc.Scalars("charts/episodic_length")]
    assert len(returns) == 2 and all(np.isfinite(returns)) and lengths == [20.0] * 2
    assert all(e.value > 0 for e in acc.Scalars("charts/SPS"))


@needs_sumo
def test_influence_graph_is_the_grid_adjacency():
    """grid4x4's signals A0..D3: each one's traffic feeds its 4-neighbours' incoming lanes."""
    env = make_env("atsc:grid4x4,seconds=100", 1, seed=0)
    try:
        ids, graph = env.signal_ids, env.influence_graph
    finally:
        env.close()
    where = {sid: ("ABCD".index(sid[0]), int(sid[1])) for sid in ids}
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            (x1, y1), (x2, y2) = where[a], where[b]
            assert bool(graph[i, j]) == (abs(x1 - x2) + abs(y1 - y2) <= 1), (a, b)
