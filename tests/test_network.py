"""Issue 29: on-policy's MLP as flags in every script (--num-layers, --activation, --feature-norm,
--layer-norm), ILVF Table 1's network on the reward-sum rows, and the per-agent MLPs evaluated
together exactly as one at a time."""

import importlib
import inspect

import pytest
import torch
import torch.nn as nn

from tests.test_scripts import ROOT, only_run_dir, run, scalars

SCRIPTS = sorted(p.stem for p in (ROOT / "cleanmarl").glob("*.py") if p.stem != "__init__")


def test_every_script_has_the_same_mlp_and_the_four_flags():
    from cleanmarl import mappo

    for script in SCRIPTS:
        m = importlib.import_module(f"cleanmarl.{script}")
        for name in ("mlp", "hidden_layers", "stacked_forward", "layer_init"):
            assert inspect.getsource(getattr(m, name)) == inspect.getsource(getattr(mappo, name)), (script, name)
        fields = vars(m.Args())
        assert {"num_layers", "activation", "feature_norm", "layer_norm", "hidden_dim"} <= set(fields), script


def test_feature_norm_normalises_each_input_row():
    from cleanmarl.mappo import mlp

    torch.manual_seed(0)
    net = mlp(5, 16, 3, 0.01, feature_norm=True)
    assert isinstance(net[0], nn.LayerNorm) and net[0].normalized_shape == (5,)
    x = torch.randn(7, 5) * torch.tensor([1.0, 10.0, 100.0, 0.1, 3.0]) + 50.0  # unscaled features
    y = net[0](x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(7), atol=1e-3, rtol=0)


def test_the_networks_have_the_stated_shape():
    from cleanmarl.mappo import mlp

    one = mlp(5, 64, 3, 0.01, layers=1, activation="relu")
    assert [type(m) for m in one] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (one[0].in_features, one[0].out_features, one[2].out_features) == (5, 64, 3)
    table1 = mlp(5, 64, 3, 0.01, layers=2, activation="relu", feature_norm=True, layer_norm=True)
    assert [type(m) for m in table1] == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.LayerNorm, nn.Linear, nn.ReLU,
                                         nn.LayerNorm, nn.Linear]
    default = mlp(5, 64, 3, 0.01)  # the scripts' own: two tanh layers, as before the flags
    assert [type(m) for m in default] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    head = table1[-1].weight  # orthogonal with gain 0.01: rows of norm 0.01
    torch.testing.assert_close(head @ head.T, 1e-4 * torch.eye(3), atol=1e-9, rtol=0)
    assert all(not layer.bias.detach().any() for layer in table1 if isinstance(layer, nn.Linear))


@pytest.mark.parametrize("net", [{}, dict(layers=3, activation="relu", feature_norm=True, layer_norm=True)])
def test_per_agent_mlps_together_equal_each_alone(net):
    from cleanmarl.mappo import mlp, stacked_forward

    torch.manual_seed(1)
    nets = nn.ModuleList(mlp(6, 16, 4, 1.0, **net) for _ in range(3))
    for module in nets.modules():  # LayerNorms away from their identity init, so the stacking shows
        if isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight), nn.init.normal_(module.bias)
    x = torch.randn(5, 2, 3, 6)
    together = stacked_forward(nets, x)
    alone = torch.stack([nets[k](x[..., k, :]) for k in range(3)], -2)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_ilvf_agent_mlp_is_mlp_per_agent():
    """ILVF's stacked-parameter AgentMLP computes, for each agent, mlp() with that agent's weights."""
    from cleanmarl.ilvf_ppo import AgentMLP
    from cleanmarl.mappo import mlp

    torch.manual_seed(2)
    net = dict(layers=2, activation="relu", feature_norm=True, layer_norm=True)
    agents = AgentMLP(3, 6, 16, 4, 1.0, **net)
    with torch.no_grad():
        for w in agents.weights:
            w.add_(0.1 * torch.randn_like(w))
        for b in agents.biases:
            b.add_(0.1 * torch.randn_like(b))
    x = torch.randn(5, 3, 6)
    for k in range(3):
        one = mlp(6, 16, 4, 1.0, **net)
        with torch.no_grad():
            for layer, w, b in zip([m for m in one if isinstance(m, (nn.Linear, nn.LayerNorm))], agents.weights, agents.biases):
                layer.weight.copy_(w[k].T if isinstance(layer, nn.Linear) else w[k])
                layer.bias.copy_(b[k])
        torch.testing.assert_close(agents(x)[:, k], one(x[:, k]), atol=1e-5, rtol=1e-5)


def test_ilvf_critics_take_the_network_and_w_init_sets_each_agents_row():
    from cleanmarl.ilvf_ppo import InfluenceCritic

    torch.manual_seed(0)
    critic = InfluenceCritic(8, 2, 4, 5, 16, True, "identity", 3.0, activation="relu", feature_norm=True,
                             layer_norm=True)
    assert critic.v.kinds == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.LayerNorm, nn.Linear, nn.ReLU, nn.LayerNorm, nn.Linear]
    assert isinstance(critic.q.activation, nn.ReLU)
    logits = critic.logits(torch.zeros(1, 8))[0]  # at s = 0 the attention's LayerNorms give 0: the bias rows
    torch.testing.assert_close(logits, 3.0 * (2 * torch.eye(4) - 1))


def test_the_flags_are_in_the_checkpoint_and_the_hyperparameter_table(tmp_path):
    r = run(ROOT / "cleanmarl" / "mappo.py", "--env-id", "matrix:team", "--total-timesteps", "400", "--num-layers", "1",
            "--activation", "relu", "--feature-norm", "--save-model", "--eval-episodes", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(tmp_path)
    ckpt = torch.load(run_dir / "mappo.cleanmarl_model", weights_only=True)
    assert (ckpt["args"]["num_layers"], ckpt["args"]["activation"], ckpt["args"]["feature_norm"]) == (1, "relu", True)
    assert list(ckpt["models"]["actor"]) == ["ids", "net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias",
                                             "net.3.weight", "net.3.bias"]  # LayerNorm, Linear, ReLU, head
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    text = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|num_layers|1|" in text and "|activation|relu|" in text and "|feature_norm|True|" in text
    assert len(scalars(run_dir, "charts/episodic_return")) == 1


def test_reward_sum_rows_take_table_1s_network(tmp_path):
    r = run(ROOT / "cleanmarl" / "mappo.py", "--env-id", "mpe:encircle-4,max_steps=10", "--total-timesteps", "40",
            "--num-steps", "10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "activation=relu feature_norm=True layer_norm=True" in r.stdout
