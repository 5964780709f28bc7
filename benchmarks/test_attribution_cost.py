"""Attribution patching on the GPT-2-shaped model, in forward-pass equivalents (counted passes and
wall time relative to one forward pass)."""
from __future__ import annotations

import time

import torch

from gpt2_shaped import GPT2Shaped
from mibench.api import CaseView
from mibench.model.passes import PassCounter
from mibench.registry import load_technique


def test_attribution_patching_cost(benchmark):
    case = GPT2Shaped(12)
    instance = case.build(0)
    p = case.prompts(16, 0)
    view = CaseView.of(case, instance.model, p, p, "node", 0)
    with torch.no_grad():
        instance.model(p.clean)  # warm up
        start = time.perf_counter()
        instance.model(p.clean)
        forward_s = time.perf_counter() - start
    technique = load_technique("attribution_patching")
    with PassCounter(instance.model, len(p)) as passes:
        benchmark.pedantic(technique.attribute, args=(view,), rounds=1, iterations=1)
    took = benchmark.stats.stats.mean
    print(f"\nattribution patching: {passes.forward_passes:g} forward + {passes.backward_passes:g} backward "
          f"passes; {took:.2f}s = {took / forward_s:.1f} forward-pass equivalents of time")
    assert passes.forward_passes + 2 * passes.backward_passes <= 4  # a backward costs ~2 forwards
