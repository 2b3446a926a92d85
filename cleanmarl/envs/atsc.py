"""Adaptive traffic-signal control (ATSC): sumo-rl on SUMO from the `eclipse-sumo` wheel.

Ids: `atsc:<net>[,seconds=S][,delta_time=D][,reward=R][,backend=libsumo|traci]`, with <net> one of
sumo-rl's multi-agent RESCO networks (`grid4x4`, `arterial4x4`, `cologne3`, `cologne8`,
`ingolstadt7`, `ingolstadt21`) or `large-grid`, the 5×5 grid of Chu et al. (2020) built here
(see `large_grid_files`). `seconds` is the simulated time of an episode (default 3600, the RESCO
hour), `delta_time` the simulated seconds between two decisions (default 5, sumo-rl's), so an
episode lasts seconds // delta_time steps; `reward` is a sumo-rl reward function (default
`diff-waiting-time`: the drop of the accumulated waiting time on the signal's incoming lanes,
in units of 100 s).

Adapter choices:
- agents: the traffic signals, in sumo-rl's order (SUMO's traffic-light ids);
- obs: sumo-rl's default observation of a signal (one-hot green phase, a min-green flag, the
  density and queue of each incoming lane), zero-padded to the largest signal's size;
- state: all signals' padded observations concatenated; agent_state: the signal's observation;
- actions: the next green phase; a signal with fewer green phases than the largest has the
  others masked off in `avail_actions`;
- rewards: each signal's own reward; the team reward is their sum;
- the end of the simulated horizon is a truncation (bootstrapped), never a termination.

Simulations: libsumo (default where installed) runs one simulation per process, so each parallel
env is a worker process stepped concurrently with the others; `backend=traci` keeps every
simulation in this process, each a SUMO process behind its own TraCI connection label. libsumo
workers were measured faster (docs/envs/atsc.md). Each episode starts SUMO with a seed drawn from
the env's seeded generator, so the same seed and actions give the same trajectories.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe

import numpy as np
import torch

from .base import EnvError, EnvSpec, MultiAgentEnv

INSTALL = "pip install -r requirements-atsc.txt"


@dataclass(frozen=True)
class Network:
    net: str  # file names inside sumo_rl/nets/RESCO/<dir>
    route: str
    begin: int  # the simulated second the scenario starts at (RESCO's time windows)


RESCO = {
    "grid4x4": Network("grid4x4/grid4x4.net.xml", "grid4x4/grid4x4_1.rou.xml", 0),
    "arterial4x4": Network("arterial4x4/arterial4x4.net.xml", "arterial4x4/arterial4x4_1.rou.xml", 0),
    "cologne3": Network("cologne3/cologne3.net.xml", "cologne3/cologne3.rou.xml", 25200),
    "cologne8": Network("cologne8/cologne8.net.xml", "cologne8/cologne8.rou.xml", 25200),
    "ingolstadt7": Network("ingolstadt7/ingolstadt7.net.xml", "ingolstadt7/ingolstadt7.rou.xml", 57600),
    "ingolstadt21": Network("ingolstadt21/ingolstadt21.net.xml", "ingolstadt21/ingolstadt21.rou.xml", 57600),
}
NETS = (*RESCO, "large-grid")
OPTIONS = ("seconds", "delta_time", "reward", "backend")
REWARDS = ("diff-waiting-time", "average-speed", "queue", "pressure")


def sumo_home() -> str:
    """SUMO_HOME of the eclipse-sumo wheel (or the user's own); raises EnvError when absent."""
    try:
        import sumo
    except ImportError:
        raise EnvError(f"atsc: needs SUMO (the eclipse-sumo wheel) and sumo-rl, not installed: {INSTALL}") from None
    return os.environ.get("SUMO_HOME") or sumo.SUMO_HOME


def import_sumo_rl(libsumo: bool):
    """sumo-rl's SumoEnvironment, with libsumo as traci or not (sumo-rl reads this at import)."""
    os.environ["SUMO_HOME"] = sumo_home()  # sumo-rl refuses to import without it
    if libsumo:
        os.environ["LIBSUMO_AS_TRACI"] = "quiet"
    else:
        os.environ.pop("LIBSUMO_AS_TRACI", None)
    try:
        from sumo_rl.environment.env import SumoEnvironment
    except ImportError as e:
        raise EnvError(f"atsc: sumo-rl cannot be imported ({e}): {INSTALL}") from None
    return SumoEnvironment


def signal_graph(net_file: str, ids) -> torch.Tensor:
    """[n, n] bool, [i, j] true when an edge leaving signal j's junction feeds signal i's incoming
    lanes (j's traffic reaches i's queues and rewards), and the diagonal: the network's adjacency."""
    import sumolib

    net = sumolib.net.readNet(net_file)
    lanes = [net.getTLS(i).getConnections() for i in ids]  # (incoming lane, outgoing lane, link index)
    into = [{c[0].getEdge().getID() for c in conns} for conns in lanes]
    out_of = [{c[1].getEdge().getID() for c in conns} for conns in lanes]
    graph = torch.eye(len(ids), dtype=torch.bool)
    for i, j in itertools.permutations(range(len(ids)), 2):
        graph[i, j] = bool(out_of[j] & into[i])
    return graph


def has_libsumo() -> bool:
    return importlib.util.find_spec("libsumo") is not None  # not imported here: workers load it


# -- atsc:large-grid --------------------------------------------------------------------------
GRID, LINK, LANES, SPEED = 5, 200.0, 2, 13.89  # 5x5 signals, 200 m links, 2 lanes, 50 km/h
Q_BASE, Q_PEAK = 100.0, 400.0  # veh/h per route: background and the peak added on top
BIN = 300  # demand is piecewise constant over 5-minute bins


def grid_routes() -> dict[str, list[tuple[str, str]]]:
    """The straight routes through the grid, (entry edge, exit edge), in two groups.

    netgenerate names a column A..E (west to east), a row 0..4 (south to north) and the fringe
    nodes left<r>, right<r>, bottom<c>, top<c>; an edge is named <from node><to node>.
    """
    cols = "ABCDE"[:GRID]
    last = GRID - 1
    horizontal = []
    vertical = []
    for k in range(GRID):
        c = cols[k]
        horizontal += [(f"left{k}A{k}", f"{cols[-1]}{k}right{k}"), (f"right{k}{cols[-1]}{k}", f"A{k}left{k}")]
        vertical += [(f"bottom{k}{c}0", f"{c}{last}top{k}"), (f"top{k}{c}{last}", f"{c}0bottom{k}")]
    return {"horizontal": horizontal, "vertical": vertical}


def demand(t: np.ndarray, seconds: int) -> dict[str, np.ndarray]:
    """Vehicles per hour on each route of a group at second t of a `seconds`-long episode.

    q_g(t) = Q_BASE + Q_PEAK * max(0, 1 - |t - c_g| / w), w = seconds / 3, with the horizontal
    (west-east) group peaking at c = seconds / 3 and the vertical (north-south) group at
    c = 2 * seconds / 3: a background of 100 veh/h per route and a triangular wave of 400 veh/h
    that moves from the east-west arterials to the north-south ones, so the best signal plan
    changes over the episode (the time-varying major flows of Chu et al. 2020, our own profile).
    """
    t = np.asarray(t, dtype=np.float64)
    w = seconds / 3
    tri = lambda c: np.maximum(0.0, 1.0 - np.abs(t - c) / w)  # noqa: E731
    return {"horizontal": Q_BASE + Q_PEAK * tri(seconds / 3), "vertical": Q_BASE + Q_PEAK * tri(2 * seconds / 3)}


def route_xml(seconds: int) -> str:
    """SUMO flows: per route and 5-minute bin, Bernoulli insertions each second with probability
    q(bin midpoint) / 3600, so arrivals are random under SUMO's seed."""
    lines = ['<routes>', '    <vType id="car" accel="2.6" decel="4.5" sigma="0.5" length="5" maxSpeed="13.89"/>']
    starts = np.arange(0, seconds, BIN)
    ends = np.minimum(starts + BIN, seconds)
    rates = demand((starts + ends) / 2, seconds)
    for b, (start, end) in enumerate(zip(starts, ends)):
        for group, routes in grid_routes().items():
            for src, dst in routes:
                p = rates[group][b] / 3600
                lines.append(f'    <flow id="{src}-{dst}-{b}" type="car" begin="{start}" end="{end}" '
                             f'probability="{p:.6f}" from="{src}" to="{dst}" departLane="best" departSpeed="max"/>')
    lines.append('</routes>')
    return "\n".join(lines) + "\n"


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cleanmarl", "atsc")


def large_grid_files(seconds: int) -> tuple[str, str]:
    """(net file, route file) of atsc:large-grid, generated once into the user cache directory."""
    home = sumo_home()
    netgenerate = os.path.join(home, "bin", "netgenerate")
    signals = ",".join(f"{c}{r}" for r in range(GRID) for c in "ABCDE"[:GRID])
    cmd = [netgenerate, "--grid", "--grid.number", str(GRID), "--grid.length", str(LINK),
           "--grid.attach-length", str(LINK), "--default.lanenumber", str(LANES),
           "--default.speed", str(SPEED), "--tls.set", signals, "--no-turnarounds", "true", "--seed", "0"]
    routes = route_xml(seconds)
    key = hashlib.sha256((" ".join(cmd[1:]) + home + routes).encode()).hexdigest()[:16]
    folder = os.path.join(cache_dir(), f"large-grid-{key}")
    net, rou = os.path.join(folder, "large-grid.net.xml"), os.path.join(folder, "large-grid.rou.xml")
    if os.path.exists(net) and os.path.exists(rou):
        return net, rou
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder)  # write aside, then rename: concurrent builders cannot clash
    result = subprocess.run(cmd + ["--output-file", os.path.join(tmp, "net.xml")], capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvError(f"atsc:large-grid: netgenerate failed: {result.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(tmp, "rou.xml"), "w") as f:
        f.write(routes)
    os.replace(os.path.join(tmp, "rou.xml"), rou)
    os.replace(os.path.join(tmp, "net.xml"), net)
    os.rmdir(tmp)
    return net, rou


# -- one simulation ---------------------------------------------------------------------------
class Simulation:
    """One sumo-rl SumoEnvironment as padded arrays: reset(seed) -> obs [n, obs_dim];
    step(actions [n]) -> (obs, reward [n])."""

    def __init__(self, libsumo: bool, net: str, route: str, begin: int, seconds: int, delta_time: int, reward: str):
        SumoEnvironment = import_sumo_rl(libsumo)
        self.env = SumoEnvironment(  # its own episode end goes unused: the base class truncates
            net_file=net, route_file=route, begin_time=begin, num_seconds=seconds,
            delta_time=delta_time, reward_fn=reward, add_system_info=False, add_per_agent_info=False,
            sumo_warnings=False, additional_sumo_cmd="--no-step-log true")
        self.ids = list(self.env.ts_ids)
        signals = [self.env.traffic_signals[ts] for ts in self.ids]
        self.obs_sizes = [s.observation_space.shape[0] for s in signals]
        self.n_phases = [s.action_space.n for s in signals]
        self.obs = np.zeros((len(self.ids), max(self.obs_sizes)), dtype=np.float32)

    def _record(self, obs: dict) -> np.ndarray:
        for j, ts in enumerate(self.ids):
            self.obs[j, : self.obs_sizes[j]] = obs[ts]
        return self.obs.copy()

    def reset(self, seed: int) -> np.ndarray:
        return self._record(self.env.reset(seed=seed))

    def step(self, actions: np.ndarray):
        obs, rew, _, _ = self.env.step({ts: int(a) for ts, a in zip(self.ids, actions)})
        return self._record(obs), np.array([rew[ts] for ts in self.ids], dtype=np.float32)

    def close(self):
        self.env.close()


def serve(fd: int) -> None:
    """A worker process's loop: one libsumo simulation, driven by (command, argument) messages."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it closes us
    conn = Connection(fd)
    try:
        sim = Simulation(True, **conn.recv())
        conn.send(("ok", (sim.ids, sim.obs_sizes, sim.n_phases)))
    except Exception as e:  # report construction errors to the parent as one line
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            command, arg = conn.recv()
        except EOFError:  # the parent exited without closing us
            command, arg = "close", None
        if command == "close":
            sim.close()
            return
        try:
            conn.send(("ok", getattr(sim, command)(arg)))
        except Exception as e:  # e.g. SUMO stopped: the parent raises it as one line
            conn.send(("error", f"{type(e).__name__}: {e}"))


class WorkerSimulation:
    """A Simulation in its own process; send() and receive() let the envs step concurrently.

    A plain subprocess rather than multiprocessing's spawn, which would re-run the user's main
    script in every worker."""

    def __init__(self, config: dict):
        self.conn, child = Pipe()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from cleanmarl.envs.atsc import serve; serve({child.fileno()})"],
            pass_fds=[child.fileno()], stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": path})
        child.close()
        self.conn.send(config)

    def ready(self) -> None:
        """Wait for the simulation to load its network; raise its error as one line."""
        self.ids, self.obs_sizes, self.n_phases = self.receive()

    def send(self, command: str, arg) -> None:
        self.conn.send((command, arg))

    def receive(self):
        try:
            status, reply = self.conn.recv()
        except EOFError:
            raise EnvError(f"atsc: a SUMO worker process exited (code {self.process.wait()})") from None
        if status == "error":
            raise EnvError(f"atsc: the SUMO simulation failed: {reply}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.conn.send(("close", None))
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.conn.close()


class LocalSimulation(Simulation):
    """A TraCI Simulation in this process, with the same send()/receive() calls as a worker."""

    def send(self, command: str, arg) -> None:
        self._reply = getattr(self, command)(arg)

    def receive(self):
        return self._reply


# -- the family ---------------------------------------------------------------------------------
class TrafficSignals(MultiAgentEnv):
    def __init__(self, env_id: str, scenario: str, num_envs: int, seed: int, device, options: dict[str, str]):
        if scenario not in NETS:
            raise EnvError(f"unknown ATSC network '{scenario}' in '{env_id}': valid: {', '.join(NETS)}")
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise EnvError(f"{env_id}: unknown options {sorted(unknown)}; valid: {', '.join(OPTIONS)}")
        try:
            seconds = int(options.get("seconds", 3600))
            delta_time = int(options.get("delta_time", 5))
        except ValueError:
            raise EnvError(f"{env_id}: seconds and delta_time must be integers") from None
        if not 3 <= delta_time <= seconds:  # sumo-rl needs delta_time > its 2 s yellow
            raise EnvError(f"{env_id}: need 3 <= delta_time <= seconds, got delta_time={delta_time}, seconds={seconds}")
        reward = options.get("reward", REWARDS[0])
        if reward not in REWARDS:
            raise EnvError(f"{env_id}: unknown reward '{reward}'; valid: {', '.join(REWARDS)}")
        sumo_home()  # fails here, in one line, when SUMO is missing
        libsumo = has_libsumo()
        backend = options.get("backend", "libsumo" if libsumo else "traci")
        if backend not in ("libsumo", "traci"):
            raise EnvError(f"{env_id}: backend must be libsumo or traci, got '{backend}'")
        if backend == "libsumo" and not libsumo:
            raise EnvError(f"{env_id}: libsumo is not installed: {INSTALL}")
        package = importlib.util.find_spec("sumo_rl")
        if package is None:
            raise EnvError(f"{env_id} needs sumo-rl, which is not installed: {INSTALL}")
        if scenario == "large-grid":
            net, route = large_grid_files(seconds)
            begin = 0
        else:
            folder = os.path.join(os.path.dirname(package.origin), "nets", "RESCO")
            network = RESCO[scenario]
            net, route, begin = os.path.join(folder, network.net), os.path.join(folder, network.route), network.begin
        config = dict(net=net, route=route, begin=begin, seconds=seconds, delta_time=delta_time, reward=reward)
        if backend == "libsumo":
            self.sims = [WorkerSimulation(config) for _ in range(num_envs)]
            try:
                for sim in self.sims:  # the workers load their networks concurrently
                    sim.ready()
            except EnvError:
                self.close()
                raise
        else:
            self.sims = [LocalSimulation(False, **config) for _ in range(num_envs)]
        first = self.sims[0]
        n, A = len(first.ids), max(first.n_phases)
        obs_dim = max(first.obs_sizes)
        self.signal_ids = first.ids
        self.influence_graph = signal_graph(net, first.ids).to(device)
        spec = EnvSpec(env_id=env_id, n_agents=n, obs_dim=obs_dim, state_dim=n * obs_dim, agent_state_dim=obs_dim,
                       episode_limit=seconds // delta_time, discrete=True, n_actions=int(A))
        super().__init__(spec, num_envs, device)
        self.backend = backend
        self._rng = np.random.default_rng(seed)  # draws each episode's SUMO seed
        self._obs = np.zeros((num_envs, n, obs_dim), dtype=np.float32)
        avail = torch.arange(A).view(1, A) < torch.tensor(first.n_phases).view(n, 1)
        self._avail = avail.to(self.device).unsqueeze(0).expand(num_envs, n, A).contiguous()

    def _reset_envs(self, mask):
        seeds = self._rng.integers(0, 2**31 - 1, size=self.num_envs)  # one draw per reset call
        rows = mask.nonzero().flatten().tolist()
        for i in rows:  # restart every simulation first, then collect: workers restart concurrently
            self.sims[i].send("reset", int(seeds[i]))
        for i in rows:
            self._obs[i] = self.sims[i].receive()

    def _observe(self):
        obs = torch.as_tensor(self._obs, device=self.device).clone()
        return obs, obs.reshape(self.num_envs, -1), obs, self._avail

    def _transition(self, actions):
        acts = actions.cpu().numpy()
        for i, sim in enumerate(self.sims):
            sim.send("step", acts[i])
        reward = np.zeros((self.num_envs, self.spec.n_agents), dtype=np.float32)
        for i, sim in enumerate(self.sims):
            self._obs[i], reward[i] = sim.receive()
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return torch.as_tensor(reward, device=self.device), terminated, None

    def close(self):
        for sim in getattr(self, "sims", []):
            sim.close()
        self.sims = []


def benchmark(nets: list[str], num_envs: list[int], steps: int, rounds: int) -> None:
    """Env steps per second under uniformly random valid actions, libsumo workers against
    in-process TraCI, alternated in rounds so both see the same machine load."""
    torch.set_num_threads(1)
    results: dict[tuple, list[float]] = {}
    for _ in range(rounds):
        for net in nets:
            for E in num_envs:
                for backend in ("libsumo", "traci"):
                    env = TrafficSignals(f"atsc:{net}", net, E, 0, "cpu", {"backend": backend})
                    step = env.reset()
                    start = time.perf_counter()
                    for _ in range(steps):
                        step = env.step(torch.multinomial(step.avail_actions.flatten(0, 1).float(), 1).view(E, -1))
                    results.setdefault((net, E, backend), []).append(steps * E / (time.perf_counter() - start))
                    env.close()
    for (net, E, backend), sps in results.items():
        print(f"atsc:{net} num_envs={E} {backend}: {max(sps):.1f} env-steps/s "
              f"(rounds: {', '.join(f'{s:.1f}' for s in sps)})")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=benchmark.__doc__)
    parser.add_argument("--nets", nargs="+", default=["grid4x4", "large-grid"])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    a = parser.parse_args()
    benchmark(a.nets, a.num_envs, a.steps, a.rounds)
