"""Unit tests of mibench/model/noising.py (Gaussian embedding noise for causal tracing), on the
induction case, whose prompts declare the key labels ``SRC`` and ``SRC+1``."""
from __future__ import annotations

import pytest
import torch

from conftest import prepared
from mibench.model.ablation import cache_nodes, run_with_values
from mibench.model.hooks import EMBED
from mibench.model.noising import EmbeddingNoise, embedding_noise, key_positions, noised

# two cores shared with other jobs: one thread avoids oversubscription stalls
torch.set_num_threads(1)

CASE, SEED = "induction", 0
LABELS = ["SRC", "SRC+1"]


def _prep():
    return prepared(CASE, SEED)


def _logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


def _noise(seed: int = 0, scale: float = 3.0) -> EmbeddingNoise:
    prep = _prep()
    return embedding_noise(prep.instance.model, prep.prompts, key_positions(prep.prompts, LABELS),
                           scale=scale, seed=seed)


# --- key_positions ----------------------------------------------------------------------------

def test_key_positions_are_the_declared_positions_in_label_order():
    prompts = _prep().prompts
    index = key_positions(prompts, ["SRC+1", "SRC"])
    assert index.dtype == torch.long
    assert index.shape == (len(prompts), 2)
    assert torch.equal(index[:, 0], prompts.positions["SRC+1"].long())
    assert torch.equal(index[:, 1], prompts.positions["SRC"].long())


def test_key_positions_rejects_an_undeclared_label_by_name():
    with pytest.raises(ValueError, match="NOT_A_LABEL"):
        key_positions(_prep().prompts, ["SRC", "NOT_A_LABEL"])


# --- embedding_noise --------------------------------------------------------------------------

def test_embedding_noise_is_deterministic_per_seed():
    a, b, c = _noise(seed=5), _noise(seed=5), _noise(seed=6)
    assert torch.equal(a.values, b.values) and torch.equal(a.index, b.index) and a.std == b.std
    assert not torch.allclose(a.values, c.values)
    assert a.std == c.std  # the seed changes the draw, not its scale


def test_embedding_noise_std_is_scale_times_clean_token_embedding_std():
    """Computed independently: the token embeddings are rows of W_E (checked against hook_embed),
    and their std over every prompt, position and dimension, times ``scale``, is the noise std."""
    prep = _prep()
    model, tokens = prep.instance.model, prep.prompts.clean
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == EMBED)
        embed = model.W_E[tokens]
    assert torch.equal(cache[EMBED], embed)
    clean_std = float(embed.std())
    for scale in (3.0, 0.5):
        assert _noise(scale=scale).std == pytest.approx(scale * clean_std, rel=1e-5)


def test_embedding_noise_values_have_the_stated_shape_and_spread():
    prep = _prep()
    noise = _noise(scale=3.0)
    n, k, d_model = len(prep.prompts), len(LABELS), prep.instance.model.cfg.d_model
    assert noise.values.shape == (n, k, d_model)
    assert torch.equal(noise.index, key_positions(prep.prompts, LABELS))
    # n·k·d_model ≈ 23k draws: the empirical std is within a few percent of the stated one
    assert float(noise.values.std()) == pytest.approx(noise.std, rel=0.03)
    assert abs(float(noise.values.mean())) < 0.03 * noise.std


# --- EmbeddingNoise.add_to --------------------------------------------------------------------

def test_add_to_changes_exactly_the_indexed_positions_by_exactly_the_values():
    """Positions differ per prompt here, so a wrong row/position pairing would show."""
    gen = torch.Generator().manual_seed(0)
    n, seq, d = 4, 7, 5
    embed = torch.randn(n, seq, d, generator=gen)
    index = torch.tensor([[0, 3], [1, 6], [5, 2], [4, 0]])
    values = torch.randn(n, 2, d, generator=gen)
    before = embed.clone()
    out = EmbeddingNoise(index, values, 1.0).add_to(embed)

    assert torch.equal(embed, before)  # the input is not modified in place
    mask = torch.zeros(n, seq, dtype=torch.bool)
    mask[torch.arange(n)[:, None], index] = True
    assert torch.equal(out[~mask], embed[~mask])
    for i in range(n):
        for j in range(index.shape[1]):
            assert torch.equal(out[i, index[i, j]], embed[i, index[i, j]] + values[i, j])
            assert not torch.equal(out[i, index[i, j]], embed[i, index[i, j]])


# --- noised -----------------------------------------------------------------------------------

def test_noised_changes_the_forward_only_from_the_first_noised_position():
    """Noise at SRC and SRC+1 changes the logits there; earlier positions cannot see it (causal
    attention), which shows the noise lands where its index says."""
    prep = _prep()
    model, tokens = prep.instance.model, prep.prompts.clean
    first = int(prep.prompts.positions["SRC"].min())
    clean = _logits(model, tokens)
    with noised(model, _noise()):
        noisy = _logits(model, tokens)
    assert not torch.allclose(noisy[:, first:], clean[:, first:], atol=1e-2)
    assert torch.allclose(noisy[:, :first], clean[:, :first], atol=1e-6)


def test_noised_adds_the_noise_to_the_token_embeddings():
    """The hook sits at ``hook_embed`` (before the positional embedding is added): what that hook
    point carries inside the context is exactly ``noise.add_to`` of the clean token embeddings."""
    prep = _prep()
    model, tokens = prep.instance.model, prep.prompts.clean
    noise = _noise()
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names_filter=lambda name: name == EMBED)
        with noised(model, noise):
            _, noisy = model.run_with_cache(tokens, names_filter=lambda name: name == EMBED)
    assert torch.equal(noisy[EMBED], noise.add_to(clean[EMBED]))


def test_noised_removes_its_hook_on_exit():
    prep = _prep()
    model, tokens = prep.instance.model, prep.prompts.clean
    before = _logits(model, tokens)
    with noised(model, _noise()):
        assert not torch.equal(_logits(model, tokens), before)
    assert torch.equal(_logits(model, tokens), before)


def test_noised_removes_its_hook_when_the_body_raises():
    prep = _prep()
    model, tokens = prep.instance.model, prep.prompts.clean
    before = _logits(model, tokens)
    with pytest.raises(RuntimeError, match="inside"):
        with noised(model, _noise()):
            raise RuntimeError("inside")
    assert torch.equal(_logits(model, tokens), before)


def test_restoring_every_noised_block0_site_recovers_the_clean_logits():
    """Causal tracing restores clean values inside the noised run: restoring ``r0@LABEL`` for each
    noised label undoes the noise entirely; restoring only one label does not."""
    prep = _prep()
    model, prompts = prep.instance.model, prep.prompts
    sites = [f"r0@{label}" for label in LABELS]
    clean_logits, clean_values = cache_nodes(model, prompts.clean, sites, prompts.positions)
    with noised(model, _noise()):
        restored = run_with_values(model, prompts.clean, clean_values, positions=prompts.positions)
        partly = run_with_values(model, prompts.clean, {sites[0]: clean_values[sites[0]]},
                                 positions=prompts.positions)
        still_noised = _logits(model, prompts.clean)  # the inner hooks left the noise hook in place
    assert torch.allclose(restored, clean_logits, atol=1e-5)
    assert not torch.allclose(partly, clean_logits, atol=1e-2)
    assert not torch.allclose(still_noised, clean_logits, atol=1e-2)
