"""Exact head patching: the suite's production entry point (``ablation_effects`` with the case's
task metric, exactly what the activation-patching adapter calls in the runner) against
TransformerLens's patching helper, and how the suite's cost grows with depth and prompt count.
Prints the figures the README quotes."""
from __future__ import annotations

import time

import pytest
import torch

from gpt2_shaped import GPT2Shaped, gpt2_shaped, logit_diff, prompts
from mibench import names
from mibench.api import PromptSet
from mibench.model.ablation import ablation_effects

RESULTS: dict[str, float] = {}


def _swapped(p: PromptSet) -> PromptSet:
    """``ablation_effects`` patches a prompt set's corrupted values into its clean run; TL's helper
    patches clean values into the corrupted run, so the suite gets the set with the two swapped."""
    return PromptSet(p.corrupted, p.clean, p.answer, p.wrong, p.positions)


def _suite_head_patching(model, p):
    """Clean head outputs patched into the corrupted run, one head at a time (TL's direction),
    through the runner's own path: ``ablation_effects`` with the case's task metric, which
    declares the final position, so the patched runs unembed only that position."""
    heads = [n for n in names.nodes(names.Shape.of(model)) if n.startswith("a")]
    swapped = _swapped(p)
    return ablation_effects(model, swapped, heads, "corrupted", GPT2Shaped().task_metric(swapped))


def _as_patched_metrics(model, p, effects) -> torch.Tensor:
    """Effects (unpatched − patched metric) as TL reports them: the patched metric, layer × head."""
    swapped = _swapped(p)
    with torch.no_grad():
        unpatched = float(GPT2Shaped().task_metric(swapped)(model(swapped.clean)))
    values = [unpatched - effects[names.head(l, h)] for l in range(model.cfg.n_layers)
              for h in range(model.cfg.n_heads)]
    return torch.tensor(values).reshape(model.cfg.n_layers, model.cfg.n_heads)


@pytest.fixture(scope="module")
def model_and_prompts():
    torch.manual_seed(0)
    return gpt2_shaped(12), prompts()


def test_suite_against_transformer_lens(model_and_prompts, benchmark):
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    model, p = model_and_prompts
    with torch.no_grad():
        start = time.perf_counter()
        _, clean_cache = model.run_with_cache(p.clean)
        tl = get_act_patch_attn_head_out_all_pos(model, p.corrupted, clean_cache,
                                                lambda logits: logit_diff(logits, p).mean())
        tl_s = time.perf_counter() - start
    effects = benchmark.pedantic(_suite_head_patching, args=(model, p), rounds=1, iterations=1)
    ours_s = benchmark.stats.stats.mean
    ours = _as_patched_metrics(model, p, effects)
    RESULTS.update(tl_s=tl_s, ours_s=ours_s)
    diff = (ours - tl).abs().max().item()
    print(f"\nexact patching of 144 heads, 16 prompts x 20 tokens: TransformerLens {tl_s:.1f}s, "
          f"mibench {ours_s:.1f}s, speed-up {tl_s / ours_s:.1f}x, max |difference| {diff:.2e}")
    assert diff <= 1e-4
    # Measured on this project's 2-core machine: 2.7x-3.1x across runs (TransformerLens alone
    # varies 89-103 s). The bound catches a regression of the fast path, not run-to-run noise.
    assert tl_s / ours_s >= 2.5


@pytest.mark.parametrize("n_layers, n_prompts", [(2, 16), (6, 16), (12, 16), (2, 64), (6, 64), (12, 64)])
def test_scaling(n_layers, n_prompts, benchmark):
    torch.manual_seed(0)
    model, p = gpt2_shaped(n_layers), prompts(n_prompts)
    with torch.no_grad():
        start = time.perf_counter()
        model(p.clean)
        forward_s = time.perf_counter() - start
    benchmark.pedantic(_suite_head_patching, args=(model, p), rounds=1, iterations=1)
    took = benchmark.stats.stats.mean
    print(f"\nscaling: {n_layers:2d} layers x {n_prompts:2d} prompts: exact patching of "
          f"{12 * n_layers} heads {took:6.1f}s = {took / forward_s:5.1f} forward passes")
