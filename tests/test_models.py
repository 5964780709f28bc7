import numpy as np
import torch

from mibench.models import PlantedModel, ResidualLayout
from mibench.models.planted import random_orthogonal


def _model(layer_norm: bool) -> PlantedModel:
    rng = np.random.default_rng(0)
    layout = ResidualLayout({"tok": 8, "pos": 8, "junk": 8})
    model = PlantedModel(layout, n_layers=2, n_heads=2, d_head=8, d_vocab=8, n_ctx=8, d_mlp=4,
                         layer_norm=layer_norm)
    model.embed_tokens("tok")
    model.embed_positions("pos")
    model.unembed("tok")
    for layer in range(2):
        for h in range(2):
            model.add_distractor_head(layer, h, rng, read_blocks=["tok", "pos"], write={"junk": 1.0, "tok": 0.5})
        model.set_neurons(layer, [0, 1], rng.standard_normal((2, layout.d_model)),
                          rng.standard_normal((2, layout.d_model)), bias=0.1)
    return model


def test_rotation_preserves_the_function_and_hides_the_axes():
    tokens = torch.randint(0, 8, (4, 8))
    for layer_norm in (False, True):
        model = _model(layer_norm)
        before = model.to_bridge()(tokens)
        model.rotate(np.random.default_rng(1))
        after = model.to_bridge()(tokens)
        torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)
        # a one-hot embedding row is spread over many residual dimensions after rotation
        assert (np.abs(model.W_E[3]) > 1e-3).sum() > 10


def test_rotation_keeping_ones_is_orthogonal_and_fixes_ones():
    R = random_orthogonal(10, np.random.default_rng(0), keep_ones=True)
    np.testing.assert_allclose(R @ R.T, np.eye(10), atol=1e-10)
    np.testing.assert_allclose(np.ones(10) @ R, np.ones(10), atol=1e-10)


def test_bridge_exposes_planted_weights():
    model = _model(False)
    bridge = model.to_bridge()
    np.testing.assert_allclose(bridge.W_Q.detach().numpy(), model.W_Q, atol=1e-6)
    np.testing.assert_allclose(bridge.W_O.detach().numpy(), model.W_O, atol=1e-6)
    np.testing.assert_allclose(bridge.W_U.detach().numpy(), model.W_U, atol=1e-6)
