"""The report's figures: each draws its title on a few hand-made records and nothing without
applicable records, colours are one owner's, the output is byte-identical, and the rank plot's
noise band is the scoring threshold."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mibench.report import figures as F
from mibench.results import RunRecord
from mibench.scoring import noise_ceiling, rank_for_scoring

CREATED = "2020-01-01T00:00:00+00:00"
NODES = [f"a{layer}.h{head}" for layer in range(2) for head in range(4)]
TRUTH = {"a0.h1": "previous_token", "a1.h2": "induction"}


def record(technique="dla", case="induction", seed=0, granularity="node", tier="planted",
           scores=None, truth=None, **metrics) -> RunRecord:
    scores = dict(zip(NODES, np.linspace(-1.0, 2.0, len(NODES)) + seed)) if scores is None else scores
    truth = TRUTH if truth is None else truth
    return RunRecord(technique=technique, case=case, seed=seed, granularity=granularity, status="ok",
                     case_tier=tier, scores=scores, truth_labels=truth, created_utc=CREATED,
                     runtime_s=0.1 + len(technique) / 10, shape={"n_layers": 2, "n_heads": 4, "d_mlp": 0},
                     metrics={"auroc": 0.75, "k": len(truth), **metrics})


def records() -> list[RunRecord]:
    out = []
    for tech in ("dla", "random", "activation_patching"):
        for case in ("induction", "ioi", "copy_suppression"):
            for seed in (0, 1):
                out.append(record(tech, case, seed))
        out.append(record(tech, "trap_backup", 0, tier="trap", fooled=tech != "dla"))
        out.append(record(tech, "trap_backup", 1, tier="trap", fooled=tech == "random"))
    out.append(record("random@layer", "trap_backup", 0, granularity="layer", tier="trap", fooled=True,
                      scores={"L0": 0.2, "L1": 0.9}, truth={"L1": "answer"}))
    out.append(record("dla", "only_two_cases", 0))  # not a 3-case technique: stays off cost/quality
    out.append(RunRecord(technique="dla", case="induction", seed=0, granularity="node", status="error",
                         created_utc=CREATED))
    return out


def test_each_figure_draws_its_title():
    runs = records()
    rank = F.rank_plots(runs, "induction")
    assert rank.startswith("<svg") and "induction, seed 0: every component" in rank
    assert "activation_patching" in rank and "previous_token" in rank
    traps = F.trap_verdicts(runs)
    assert traps.startswith("<svg")
    assert "Traps: share of seeds on which each technique was fooled (all seeds)" in traps
    assert "trap_backup" in traps and "random@layer" in traps
    cost = F.cost_quality(runs)
    assert cost.startswith("<svg") and "node-level techniques on" in cost and "mean AUROC" in cost
    assert "random@layer" not in cost  # another granularity: not comparable


def test_nothing_to_draw_gives_none():
    planted = [record()]
    assert F.rank_plots(planted, "ioi") is None
    assert F.rank_plots([RunRecord(technique="dla", case="ioi", seed=0, granularity="node",
                                   status="error", created_utc=CREATED)], "ioi") is None
    assert F.trap_verdicts(planted) is None
    assert F.cost_quality(planted) is None  # one case: fewer than three
    assert F.cost_quality([record("random@layer", case, granularity="layer")
                           for case in ("a", "b", "c")]) is None  # not node level


def test_colours_are_stable_across_subsets_and_random_is_grey():
    assert F.technique_colours(["a", "b"])["b"] == F.technique_colours(["b"])["b"]
    both = F.technique_colours(["dla", "activation_patching", "activation_patching@site"])
    assert both["dla"] == F.technique_colours(["dla"])["dla"]
    assert both["activation_patching"] == both["activation_patching@site"]
    assert both["dla"] != both["activation_patching"]
    assert F.technique_colours(["random", "random@edge"]) == {"random": F.RANDOM_COLOUR,
                                                              "random@edge": F.RANDOM_COLOUR}
    registered = F._registered()
    everything = F.technique_colours(registered)
    assert len({everything[n] for n in registered if n != "random"}) == len(registered) - 1
    assert F.RANDOM_COLOUR not in {everything[n] for n in registered if n != "random"}


@pytest.mark.parametrize("draw", [lambda rs: F.rank_plots(rs, "induction"), F.trap_verdicts,
                                  F.cost_quality, lambda rs: F.head_heatmaps(rs, "induction")])
def test_same_records_give_byte_identical_svg(draw):
    assert draw(records()) == draw(list(reversed(records())))


def test_noise_band_is_the_scoring_threshold():
    scores = {"a": 5.0, "b": -4.0, "c": 0.3, "d": -0.2, "e": 0.1, "f": 0.0, "g": -0.05}
    truth = {"a": "mover", "b": "negative"}
    run = record(scores=scores, truth=truth)
    signed = F.rank_panel(run, signed=True)
    values = rank_for_scoring(pd.Series(scores), True)
    assert signed.noise_high == noise_ceiling(values, truth)
    assert signed.noise_low == 0.0
    assert signed.components[:2] == ["a", "b"] and signed.roles[:3] == ["mover", "negative", None]
    assert list(signed.values) == sorted(values, reverse=True)
    unsigned = F.rank_panel(run, signed=False)  # ranked by the score itself: b falls to the bottom
    assert unsigned.components[-1] == "b" and unsigned.noise_low == -0.2
    assert unsigned.noise_high == noise_ceiling(pd.Series(scores), truth)
    assert F.rank_panel(record(scores={"a": 1.0}, truth={"a": "x"}), True).noise_high is None


def test_trap_shares_count_each_seed_once():
    runs = records() + [RunRecord(**{**record("dla", "trap_backup", 0, tier="trap", fooled=True).__dict__,
                                     "prompt_sample": 1})]  # an extra prompt sample: not a seed
    shares = F.trap_shares(runs)
    assert list(shares) == ["trap_backup"]
    assert shares["trap_backup"] == [("activation_patching", 0.5, 2), ("dla", 0.0, 2), ("random", 1.0, 2),
                                     ("random@layer", 1.0, 1)]
