"""The report's figures, drawn with matplotlib and embedded as inline SVG (no network needed to
open the page). Each function takes records and returns an SVG string, or None when it has
nothing to draw."""
from __future__ import annotations

import io

import numpy as np

from mibench import names
from mibench.report import summary as S
from mibench.results import RunRecord

ROLE_COLOURS = ["#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "mibench", "font.size": 8, "svg.fonttype": "none"})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def head_heatmaps(records: list[RunRecord], case: str) -> str | None:
    """Per node-level technique, |score| (scaled to its max) over layer × head (+ MLP column), on
    the first seed, with ground-truth nodes outlined in their role's colour."""
    runs = [r for r in S.ok(records) if r.case == case and r.granularity == "node"]
    if not runs:
        return None
    seed = min(r.seed for r in runs)
    runs = sorted((r for r in runs if r.seed == seed), key=lambda r: r.technique)
    shape = runs[0].shape
    n_layers, n_heads, has_mlp = shape["n_layers"], shape["n_heads"], shape.get("d_mlp", 0) > 0
    roles = sorted(set(runs[0].truth_labels.values()))
    colour = {role: ROLE_COLOURS[i % len(ROLE_COLOURS)] for i, role in enumerate(roles)}
    plt = _plt()
    cols = min(4, len(runs))
    rows = int(np.ceil(len(runs) / cols))
    width = n_heads + (1 if has_mlp else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 0.45 * n_layers * rows + 0.9 * rows),
                             squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    for ax, run in zip(axes.flat, runs):
        grid = np.full((n_layers, width), np.nan)
        for name, value in run.scores.items():
            node = names.parse_node(name)
            col = node.index if node.kind == "head" else n_heads
            grid[node.layer, col] = abs(value)
        top = np.nanmax(grid) or 1.0
        ax.imshow(grid / top, cmap="Greys", vmin=0, vmax=1, aspect="auto")
        for name, role in run.truth_labels.items():
            node = names.parse_node(name)
            col = node.index if node.kind == "head" else n_heads
            ax.add_patch(plt.Rectangle((col - 0.45, node.layer - 0.45), 0.9, 0.9, fill=False,
                                       edgecolor=colour[role], linewidth=2))
        ax.set_title(f"{run.technique}\nAUROC {run.metrics.get('auroc') or 0:.2f}")
        ax.set_xticks(range(width), [str(h) for h in range(n_heads)] + (["MLP"] if has_mlp else []))
        ax.set_yticks(range(n_layers), [f"L{layer}" for layer in range(n_layers)])
    handles = [plt.Rectangle((0, 0), 1, 1, fill=False, edgecolor=colour[r], linewidth=2) for r in roles]
    fig.legend(handles, roles, loc="lower center", ncol=min(4, len(roles)), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(roles) > 4)))
    fig.suptitle(f"{case}, seed {seed}: |score| per head (darker = higher), truth outlined")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return _svg(fig)


def faithfulness_curves(records: list[RunRecord], case: str) -> str | None:
    """Share of the clean metric recovered against nodes kept (as a multiple of k), mean over seeds."""
    groups = S.by([r for r in S.ok(records) if r.case == case and r.metrics.get("faithfulness_curve")],
                  "technique")
    if not groups:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    for (tech,), runs in groups.items():
        curves = [[(c["n_kept"], c["recovered"]) for c in r.metrics["faithfulness_curve"]] for r in runs]
        xs = [x for x, _ in curves[0]]
        ys = [np.nanmean([c[i][1] if c[i][1] is not None else np.nan for c in curves]) for i in range(len(xs))]
        ax.plot(xs, ys, marker="o", label=tech)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("nodes kept (top-ranked; the rest resample-ablated)")
    ax.set_ylabel("share of clean metric recovered")
    ax.set_title(f"{case}: faithfulness")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return _svg(fig)


def cost_quality(records: list[RunRecord]) -> str | None:
    """Mean runtime per run against mean AUROC, one point per technique."""
    summaries = [t for t in S.technique_summaries(records) if t.metric("auroc")["n"]]
    if not summaries:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for t in summaries:
        x, y = max(t.runtime, 1e-3), t.metric("auroc")["mean"]
        ax.scatter([x], [y], s=20)
        ax.annotate(t.technique, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("runtime per run, seconds (log)")
    ax.set_ylabel("mean AUROC over cases")
    ax.set_title("cost against quality")
    return _svg(fig)
