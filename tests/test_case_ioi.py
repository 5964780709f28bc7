"""The ioi case: its certificate passes on seeds 0-4, the task behaves like IOI, and the certificate
fails when the mechanism a check measures is removed from the planted model."""
from __future__ import annotations

import copy

import torch

from conftest import certify_instance, prepared
from mibench.registry import load_case

SEEDS = range(5)


def _role(prep, role: str) -> tuple[int, int]:
    (node,) = [n for n, r in prep.instance.truth.nodes.items() if r == role]
    layer, head = node[1:].split(".h")
    return int(layer), int(head)


def _certify(case, instance, seed):
    assert instance.seed == seed
    return certify_instance(case, instance)


def test_certificate_passes_seeds_0_to_4():
    for seed in SEEDS:
        cert = prepared("ioi", seed).certificate
        assert cert.passed, f"seed {seed}: {cert.reason()}"


def test_medium_build_certifies_on_seed_0():
    """The medium size (6 layers × 8 heads: the circuit among six more look-alike channels)."""
    from mibench.runner import prepare

    prep = prepare(load_case("ioi"), 0, size="medium")
    assert prep.instance.model.cfg.n_layers == 6 and prep.instance.model.cfg.n_heads == 8
    assert prep.certificate.passed, prep.certificate.reason()


def test_task_behaviour_accuracy_and_abc_corruption():
    case = load_case("ioi")
    for seed in SEEDS:
        prep = prepared("ioi", seed)
        logits = prep.ablator.clean_logits
        assert case.task_metric(prep.prompts).accuracy(logits) >= 0.95, seed
        with torch.no_grad():
            corrupted = prep.ablator.metric(prep.instance.model(prep.prompts.corrupted))
        clean = prep.ablator.metric(logits)
        assert clean > 0 and corrupted / clean <= 0.5, (seed, float(clean), float(corrupted))


def test_prompts_follow_the_ioi_distribution():
    case = load_case("ioi")
    p = case.prompts(64, 0, "test")
    idx = torch.arange(len(p))
    pos = p.positions
    assert {"IO", "S1", "S1+1", "S2", "END"} <= set(pos)
    assert torch.equal(p.clean[idx, pos["IO"]], p.answer)
    assert torch.equal(p.clean[idx, pos["S1"]], p.wrong)
    assert torch.equal(p.clean[idx, pos["S2"]], p.wrong)
    assert torch.equal(pos["S1+1"], pos["S1"] + 1)
    assert torch.all(pos["END"] == p.clean.shape[1] - 1)
    # both orders: ABBA (IO before S1) and BABA (S1 before IO)
    assert (pos["IO"] < pos["S1"]).any() and (pos["IO"] > pos["S1"]).any()
    # ABC: only S2 differs, and it holds a third name
    diff = p.clean != p.corrupted
    assert torch.equal(diff.nonzero()[:, 1], pos["S2"])
    c = p.corrupted[idx, pos["S2"]]
    assert not ((c == p.answer) | (c == p.wrong)).any()
    # train and test are different streams
    assert not torch.equal(case.prompts(64, 0, "train").clean, p.clean)


def test_seed_randomises_placement_and_is_deterministic():
    case = load_case("ioi")
    truths = {prepared("ioi", s).instance.truth.digest() for s in SEEDS}
    assert len(truths) > 1
    assert case.build(0).truth.digest() == prepared("ioi", 0).instance.truth.digest()


def test_zeroing_s_inhibition_ov_fails_necessity():
    prep = prepared("ioi", 0)
    layer, head = _role(prep, "s_inhibition")
    model = copy.deepcopy(prep.instance.model)
    o = model.original_model.layers[layer].attn.o.weight  # [d_model, n_heads * d_head]
    d_head = model.cfg.d_head
    with torch.no_grad():
        o[:, head * d_head:(head + 1) * d_head] = 0.0
    instance = copy.copy(prep.instance)
    instance.model = model
    cert = _certify(load_case("ioi"), instance, 0)
    failed = {c.name for c in cert.failed()}
    assert f"necessity a{layer}.h{head}" in failed, cert.reason()


def test_disabling_backup_gate_fails_backup_check():
    case = load_case("ioi")
    cert = _certify(case, case.build(0, backup_gate=False), 0)
    failed = {c.name for c in cert.failed()}
    assert "backup compensation" in failed, cert.reason()
    assert "backup silent" in failed, cert.reason()
