"""The standard benchmark families (mamujoco, smax, grf, smac): a conformance check for envs whose
episodes end early, agents die and actions are masked (tests/test_envs.py's covers fixed-length
envs), and the CORA continuous script end to end on MaMuJoCo."""

import torch

from tests import test_scripts  # not its test functions by name: pytest would collect them again here
from tests.test_envs import needs_mujoco

CORA = test_scripts.ROOT / "cleanmarl" / "cora_mappo.py"
CORA_CONT = test_scripts.ROOT / "cleanmarl" / "cora_mappo_continuous.py"


def sample_available(avail, gen):
    """A uniformly random available action per agent: [E,n,A] bool -> [E,n] long."""
    return torch.multinomial(avail.flatten(0, 1).float(), 1, generator=gen).view(avail.shape[:2])


def check_conformance(env, steps, policy=sample_available, noop=None, seed=0):
    """Step `env` with `policy`; check every Step's shapes and the base class's bookkeeping.

    noop: the action a dead (inactive) agent is left with, where agents can die. Returns the
    list of Steps (reset first) for family-specific checks."""
    spec = env.spec
    E, n, A = env.num_envs, spec.n_agents, spec.n_actions
    gen = torch.Generator().manual_seed(seed)
    out = [env.reset()]
    ep_return, ep_length = torch.zeros(E), torch.zeros(E, dtype=torch.long)
    assert out[0].active.all()
    for _ in range(steps):
        s = env.step(policy(out[-1].avail_actions, gen))
        out.append(s)
        assert s.obs.shape == (E, n, spec.obs_dim) and s.obs.dtype == torch.float32
        assert s.state.shape == (E, spec.state_dim) and s.state.dtype == torch.float32
        assert s.agent_state.shape == (E, n, spec.agent_state_dim)
        assert s.avail_actions.shape == (E, n, A) and s.avail_actions.dtype == torch.bool
        assert s.avail_actions.any(-1).all()  # every agent always has an action
        assert s.active.shape == (E, n) and s.active.dtype == torch.bool
        if noop is not None:  # the dead may only take the no-op
            dead = ~s.active
            assert s.avail_actions[dead][:, noop].all() and s.avail_actions[dead].sum(-1).eq(1).all()
        assert s.reward.shape == (E,) and s.agent_reward.shape == (E, n)
        torch.testing.assert_close(s.agent_reward.sum(-1), s.reward)
        assert not (s.terminated & s.truncated).any()
        assert s.final_obs.shape == s.obs.shape and s.final_state.shape == s.state.shape
        ep_return += s.reward
        ep_length += 1
        done = s.terminated | s.truncated
        assert torch.equal(s.episodes.done, done)
        torch.testing.assert_close(s.episodes.ret[done], ep_return[done])
        assert torch.equal(s.episodes.length[done], ep_length[done])
        assert torch.equal(s.truncated, (ep_length == spec.episode_limit) & ~s.terminated)
        if spec.has_win:
            assert not (s.episodes.win & ~done).any()
        if done.any():  # reset: a fresh episode with everyone alive, the final view kept apart
            assert s.active[done].all()
            assert not torch.equal(s.final_state[done], s.state[done])
        ep_return[done], ep_length[done] = 0, 0
    return out


@needs_mujoco
def test_cora_continuous_runs_on_mamujoco(tmp_path):
    test_scripts.test_script_runs_and_logs(CORA_CONT, "mamujoco:HalfCheetah-6x1,max_steps=20", tmp_path, extra=["--mc-samples", "4"])
