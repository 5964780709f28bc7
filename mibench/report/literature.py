"""The leaderboard's literature section: runs on the literature tier (GPT-2 small, the user's
weights; labels are the papers') and imported results (graphs made elsewhere, scored here). Shown
apart from the planted and trap tiers and never averaged with them: their labels are an account of
a trained model, not a truth known by construction."""
from __future__ import annotations

from mibench.imported import ImportedResult
from mibench.metrics import format_value
from mibench.results import RunRecord

NOTE = ("The literature tier scores techniques against circuits that papers found in GPT-2 small, "
        "on the weights of whoever ran them (`--model-path`). Its labels are the papers' account, "
        "known to be incomplete: its certificates measure them and flag contradictions instead of "
        "gating, and its figures are never averaged with the planted and trap tiers. "
        "*Imported* rows are graphs made by other tools and scored by `mibench score-graph` against "
        "the same labels, without running a model here (so no cost or faithfulness is known).")

IMPORTED_HEADERS = ["imported result", "case", "granularity", "k (truth)", "AUROC", "AP", "P@k",
                    "in_graph size", "in_graph precision", "in_graph recall", "source"]


def imported_rows(imported: list[ImportedResult]) -> list[list[str]]:
    rows = []
    for result in sorted(imported, key=lambda r: (r.case, r.label)):
        for granularity, figures in result.figures.items():
            circuit = figures["in_graph"]
            rule = f"; nodes: {result.rule} edges' |score|" if granularity == "node" and figures.get("node_rule") else ""
            rows.append([f"{result.label} (imported)", result.case, granularity, str(figures["k"]),
                         format_value(figures["auroc"]), format_value(figures["ap"]),
                         format_value(figures["precision_at_k"]), str(circuit["size"]),
                         format_value(circuit["precision"]), format_value(circuit["recall"]),
                         result.source + rule])
    return rows


def split(records: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """(the planted and trap runs, the literature runs)."""
    return ([r for r in records if r.case_tier != "literature"],
            [r for r in records if r.case_tier == "literature"])
