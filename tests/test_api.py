import math

import pandas as pd
import pytest

from mibench.api import ScoresError, Truth, make_scores, validate_scores

EXPECTED = ["a0.h0", "a0.h1", "a1.h0"]


def test_valid_scores_are_reindexed():
    out = validate_scores(make_scores({"a1.h0": 3, "a0.h1": 2, "a0.h0": 1}), EXPECTED, "t")
    assert list(out.index) == EXPECTED and list(out) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("scores, message", [
    ([1, 2, 3], "returned list"),
    (pd.Series([1.0, 2.0, math.nan], index=EXPECTED), "non-finite scores for \\['a1.h0'\\]"),
    (pd.Series([1.0, 2.0, math.inf], index=EXPECTED), "non-finite"),
    (pd.Series([1.0, 2.0, 3.0], index=["a0.h0", "a0.h1", "a7.h7"]), "unknown component names \\['a7.h7'\\]"),
    (pd.Series([1.0, 2.0], index=["a0.h0", "a0.h1"]), "left 1 components unscored"),
    (pd.Series([1.0, 2.0, 3.0, 4.0], index=EXPECTED + ["a0.h0"]), "scored some components twice"),
    (pd.Series(["x", "y", "z"], index=EXPECTED), "non-numeric"),
])
def test_bad_scores_name_the_adapter_and_the_problem(scores, message):
    with pytest.raises(ScoresError, match=message) as info:
        validate_scores(scores, EXPECTED, "my_adapter")
    assert "my_adapter" in str(info.value)


def test_truth_labels_and_digest():
    truth = Truth(nodes={"a0.h1": "previous_token", "a1.h2": "induction"},
                  edges={"a0.h1->a1.h2<k>": "k"}, direct={"a1.h2": 1}, answer_layer=1)
    assert truth.labels("layer") == {"L1": "direct_effect"}
    assert truth.labels("edge") == {"a0.h1->a1.h2<k>": "k"}
    assert set(truth.granularities()) == {"node", "edge", "layer"}
    same = Truth(nodes={"a1.h2": "induction", "a0.h1": "previous_token"},
                 edges={"a0.h1->a1.h2<k>": "k"}, direct={"a1.h2": 1}, answer_layer=1)
    assert truth.digest() == same.digest()
    assert truth.digest() != Truth(nodes={"a0.h0": "induction"}).digest()


def test_truth_rejects_bad_names():
    with pytest.raises(ValueError):
        Truth(nodes={"head0": "induction"})
