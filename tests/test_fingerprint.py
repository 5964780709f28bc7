"""The fingerprint audit: it fails a case whose circuit is the only loud part of the model, and
passes one whose circuit heads are statistically like every other head."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mibench import names
from mibench.api import Case, Instance, PromptSet, Truth
from mibench.fingerprint import BAND, AuditRow, audit
from mibench.models import PlantedModel, ResidualLayout
from mibench.registry import case_entries, load_case

torch.set_num_threads(1)


class _AllAlike(Case):
    """Every head is a random distractor of the same recipe; the 'circuit' is two heads the seed
    picks. Nothing task-agnostic can tell them apart, so the audit must pass."""

    name = "all_alike"

    def build(self, seed: int, size: str = "small") -> Instance:
        rng = np.random.default_rng(seed)
        layout = ResidualLayout({"tok": 16, "pos": 8, "junk": 8})
        model = PlantedModel(layout, n_layers=2, n_heads=4, d_head=8, d_vocab=16, n_ctx=8)
        model.embed_tokens("tok")
        model.embed_positions("pos")
        model.unembed("tok")
        for layer in range(2):
            for h in range(4):
                model.add_distractor_head(layer, h, rng, read_blocks=["tok", "pos"],
                                          write={"junk": 1.0, "tok": 0.5})
        model.rotate(rng)
        picked = rng.choice(8, size=2, replace=False)
        truth = Truth(nodes={names.head(int(i) // 4, int(i) % 4): "role" for i in picked})
        return Instance(model.to_bridge(), truth, seed)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        g = torch.Generator().manual_seed(seed + 1000 * sample)
        clean = torch.randint(0, 16, (n, 8), generator=g)
        return PromptSet(clean, clean.clone(), clean[:, 0], clean[:, 1], split=split)


class _OldStyle(_AllAlike):
    """Built the way the first planted cases were: two circuit heads with sharp attention and full
    copies of the token, every other head a random diffuse distractor with a small write."""

    name = "old_style"

    def build(self, seed: int, size: str = "small") -> Instance:
        rng = np.random.default_rng(seed)
        layout = ResidualLayout({"tok": 16, "pos": 8, "prev": 16, "junk": 8})
        model = PlantedModel(layout, n_layers=2, n_heads=4, d_head=16, d_vocab=16, n_ctx=8)
        model.embed_tokens("tok")
        model.embed_positions("pos")
        model.unembed("tok")
        prev_head, ind_head = (0, int(rng.integers(4))), (1, int(rng.integers(4)))
        pos, tok = layout.basis("pos"), layout.basis("tok")
        model.set_qk(*prev_head, pos[1:], pos[:-1], 12.0)  # previous-token head
        model.set_ov(*prev_head, tok, layout.basis("prev"))
        model.set_qk(*ind_head, tok, layout.basis("prev"), 12.0)  # induction head
        model.set_ov(*ind_head, tok, tok, gain=10.0)
        for layer in range(2):
            for h in range(4):
                if (layer, h) not in (prev_head, ind_head):
                    model.add_distractor_head(layer, h, rng, read_blocks=["tok", "pos", "junk"],
                                              write={"junk": 1.0, "tok": 0.1})
        model.rotate(rng)
        truth = Truth(nodes={names.head(*prev_head): "previous_token", names.head(*ind_head): "induction"})
        return Instance(model.to_bridge(), truth, seed)


def test_audit_fails_a_case_built_the_old_way():
    """Quiet distractors: the two circuit heads are the only large, sharp ones, and the weight and
    activation statistics say so."""
    result = audit(_OldStyle(), range(6))
    assert not result.passed
    by_name = {row.statistic: row for row in result.rows}
    assert by_name["ov_norm"].auroc == 1.0 and by_name["attention_entropy"].auroc < 0.1
    assert {"ov_norm", "attention_entropy", "output_norm"} <= {r.statistic for r in result.failed()}
    assert by_name["ov_norm"].n_truth == 12 and by_name["ov_norm"].n_other == 36


@pytest.mark.parametrize("case_name", sorted(name for name, entry in case_entries().items()
                                              if entry.meta["tier"] != "literature"))
def test_every_case_passes_the_audit_at_small(case_name):
    """Every case the suite builds (the literature tier's labels are papers', not planted) hides its circuit among look-alike channels: no task-agnostic statistic
    finds it (seeds 0-19 pooled, as `mibench verify` does; `medium` and `large` are audited there,
    too slow for the default test run)."""
    result = audit(load_case(case_name), range(20), "small")
    assert result.passed, result.table()


def test_audit_passes_when_the_circuit_looks_like_everything_else():
    result = audit(_AllAlike(), range(20))
    assert result.passed, result.table()
    assert all(BAND[0] <= row.auroc <= BAND[1] for row in result.rows)


@pytest.mark.parametrize("value, passed", [(0.3, True), (0.7, True), (0.5, True), (0.29, False),
                                           (0.71, False), (None, False)])
def test_both_directions_give_the_truth_away(value, passed):
    assert AuditRow("s", value, 2, 10).passed is passed


def test_a_statistic_of_a_kind_the_truth_lacks_cannot_give_it_away():
    """An MLP statistic on a circuit of heads only has no truth node to point at: it passes; one
    whose nodes are all truth is undefined and fails (every such node would be found)."""
    assert AuditRow("mlp_in_norm", None, 0, 30).passed
    assert not AuditRow("mlp_in_norm", None, 30, 0).passed


def test_singular_values_from_the_factors_equal_those_of_the_product():
    """The audit's effective ranks come from each head's factors (a d_head × d_head SVD); they must
    be the singular values of the full d_model × d_model circuit, including rank-deficient ones."""
    from mibench.model.statistics import effective_rank, product_singular_values

    g = torch.Generator().manual_seed(0)
    left, right = torch.randn(3, 40, 6, generator=g), torch.randn(3, 6, 50, generator=g)
    left[1, :, 3:] = 0  # head 1 has rank 3
    full = torch.linalg.svdvals(left.double() @ right.double())[:, :6]
    factored = product_singular_values(left, right)
    assert torch.allclose(factored, full, atol=1e-9)
    assert effective_rank(factored[1]) == pytest.approx(effective_rank(full[1]), abs=1e-9)
    assert effective_rank(torch.zeros(4)) == 0.0
