"""The path_patching adapter on induction: every circuit edge the corruption moves is found, the
previous-token → induction K-composition edge among them.

Why not "the K-composition edge ranks first" (the issue's wording): the induction circuit is a
chain, and patching any one edge of a chain from the corrupted run breaks the whole chain, so each
of its edges carries about the full effect (measured at small, seeds 0-4: the K edge ranks 3rd or
4th of the 4 truth edges, within 1e-6 of input → previous-token v; the induction head's own v and
direct edges are larger by the share its copying leaks). The test asserts what path patching
promises. Size small: the adapter costs one pass per edge."""
import pytest

from mibench.api import CaseView
from mibench.registry import load_case, load_technique
from mibench.runner import prepare
from mibench.scoring import auroc, rank_for_scoring


@pytest.mark.parametrize("seed", [0, 1])
def test_path_patching_finds_the_induction_chain_with_its_k_composition_edge(seed):
    case = load_case("induction")
    prep = prepare(case, seed)
    view = CaseView.of(case, prep.instance.model, prep.prompts, prep.train_prompts, "edge", seed)
    scores = load_technique("path_patching").attribute(view)
    truth = prep.instance.truth.labels("edge")
    scored = rank_for_scoring(scores.drop(list(prep.instance.truth.nil_edges)), signed=True)
    labels = [1 if e in truth else 0 for e in scored.index]
    assert auroc(scored.to_numpy(), labels) == 1.0
    top = set(scored.sort_values(ascending=False).index[:len(truth)])
    k_edge = next(e for e, kind in truth.items() if kind == "k")
    assert top == set(truth) and k_edge in top
