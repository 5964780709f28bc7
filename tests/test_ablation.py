"""The fast exact patching engine (BaseRun) against plain full forwards with hooks."""
import pytest
import torch

from conftest import prepared
from mibench import names
from mibench.model.ablation import BaseRun, node_values, run_with_values


@pytest.mark.parametrize("case_name", ["ioi", "planted_trigger", "trap_ln_scale", "induction"])
@pytest.mark.parametrize("how", ["corrupted", "resample"])
@pytest.mark.parametrize("trimmed", [False, True], ids=["all positions", "metric positions"])
def test_batched_patching_equals_full_forwards(case_name, how, trimmed):
    """Every node and residual site, patched through BaseRun, against a full forward; with
    ``trimmed`` BaseRun unembeds only the positions the metric reads, as the runner's runs do."""
    prep = prepared(case_name, 0)
    model, prompts = prep.instance.model, prep.prompts
    shape = names.Shape.of(model)
    components = names.nodes(shape) + names.sites(shape, prompts.labels)
    values = node_values(model, prompts, components, how, seed=1)
    metric = prep.case.task_metric(prompts)
    read = metric.positions if trimmed else None
    fast = BaseRun(model, prompts.clean, prompts.positions, read).single_metrics(components, values, metric)
    for name in components:
        slow = float(metric(run_with_values(model, prompts.clean, {name: values[name]},
                                            positions=prompts.positions)).mean())
        assert fast[name] == pytest.approx(slow, abs=1e-5), name


def test_reading_only_the_final_position():
    """With read_positions the logits hold only those positions, equal to the full run's."""
    prep = prepared("ioi", 0)
    model, prompts = prep.instance.model, prep.prompts
    heads = [n for n in names.nodes(names.Shape.of(model))]
    values = node_values(model, prompts, heads, "corrupted")
    final = prompts.clean.shape[1] - 1
    base = BaseRun(model, prompts.clean, prompts.positions, read_positions=[final])
    for head, logits in zip(heads, base.run_batched([{h: values[h]} for h in heads])):
        full = run_with_values(model, prompts.clean, {head: values[head]})[:, [final]]
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
