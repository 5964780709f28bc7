"""The report's figures, drawn with matplotlib and embedded as inline SVG (no network needed to
open the page). Each function takes records and returns an SVG string, or None when it has
nothing to draw."""
from __future__ import annotations

import io
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mibench import names
from mibench.api import split_label
from mibench.report import summary as S
from mibench.results import RunRecord
from mibench.scoring import noise_ceiling, rank_for_scoring

ROLE_COLOURS = ["#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

#: the technique palette: tab20's dark shades, then its light ones (so techniques next to each
#: other in sorted order get different hues), then tab20b; tab20's greys are left out, grey is
#: reserved for ``random``
TECHNIQUE_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                     "#bcbd22", "#17becf",
                     "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
                     "#dbdb8d", "#9edae5",
                     "#393b79", "#5254a3", "#6b6ecf", "#9c9ede", "#637939", "#8ca252", "#b5cf6b",
                     "#cedb9c", "#8c6d31", "#bd9e39", "#e7ba52", "#e7cb94", "#843c39", "#ad494a",
                     "#d6616b", "#e7969c", "#7b4173", "#a55194", "#ce6dbd", "#de9ed6")
RANDOM_COLOUR = "#7f7f7f"  # mid-grey: the chance baseline
NOT_TRUTH_COLOUR = "#9a9a9a"
FOOLED_COLOUR, NOT_FOOLED_COLOUR = "#d6604d", "#4dac26"


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


def _registered() -> dict[str, bool]:
    """Every registered technique's name → whether its scores are signed."""
    from mibench.registry import technique_entries

    return {name: bool(entry.meta.get("signed", True)) for name, entry in technique_entries().items()}


def technique_colours(labels: Iterable[str]) -> dict[str, str]:
    """Label → colour, the one place figures get a technique's colour, so it is the same in every
    figure whatever subset the figure shows. Every label of a technique (``name`` and
    ``name@granularity``) shares its colour. A registered technique takes the palette entry at
    the position of its name among the sorted registered names (``random`` apart: always
    mid-grey); an unregistered one, whose position would depend on which others are shown, takes
    an entry fixed by a checksum of its name among the entries registered techniques leave free
    (two unregistered techniques may then share a colour)."""
    labels = list(labels)
    registered = sorted(n for n in _registered() if n != "random")
    position = {name: i for i, name in enumerate(registered)}
    free = len(TECHNIQUE_PALETTE) - len(registered)
    out = {}
    for label in labels:
        name = split_label(label)[0]
        if name == "random":
            out[label] = RANDOM_COLOUR
        elif name in position:
            out[label] = TECHNIQUE_PALETTE[position[name] % len(TECHNIQUE_PALETTE)]
        else:
            crc = zlib.crc32(name.encode())
            index = len(registered) + crc % free if free > 0 else crc % len(TECHNIQUE_PALETTE)
            out[label] = TECHNIQUE_PALETTE[index]
    return out


def _seeds_text(seeds: Iterable[int]) -> str:
    """``seed 0``, ``seeds 0-4`` or ``seeds 0, 2, 5``."""
    seeds = sorted(set(seeds))
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def _granularity_order(granularity: str) -> int:
    return names.GRANULARITIES.index(granularity) if granularity in names.GRANULARITIES else len(names.GRANULARITIES)


def head_heatmaps(records: list[RunRecord], case: str) -> str | None:
    """Per node-level technique, |score| (scaled to its max) over layer × head (+ MLP column), on
    the first seed, with ground-truth nodes outlined in their role's colour."""
    runs = [r for r in S.ok(records) if r.case == case and r.granularity == "node" and r.scores and r.shape]
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
    colours = technique_colours(tech for (tech,) in groups)
    seeds = {r.seed for runs in groups.values() for r in runs}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    for (tech,), runs in groups.items():
        curves = [[(c["n_kept"], c["recovered"]) for c in r.metrics["faithfulness_curve"]] for r in runs]
        xs = [x for x, _ in curves[0]]
        ys = [np.nanmean([c[i][1] if c[i][1] is not None else np.nan for c in curves]) for i in range(len(xs))]
        ax.plot(xs, ys, marker="o", label=tech, color=colours[tech])
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("nodes kept (top-ranked; the rest resample-ablated)")
    ax.set_ylabel("share of clean metric recovered")
    ax.set_title(f"{case}, {_seeds_text(seeds)}: faithfulness (share of the clean metric recovered, "
                 "mean over seeds)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return _svg(fig)


#: the fewest cases a technique must have run on to be placed on the cost/quality plot
COST_QUALITY_MIN_CASES = 3
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")


def cost_quality(records: list[RunRecord]) -> str | None:
    """Passes over the prompts per run (forward + backward, the machine-independent cost: runtimes
    stay out of the committed report) against mean AUROC, one point per node-level technique that ran on at
    least :data:`COST_QUALITY_MIN_CASES` cases (the others' means cover too few, or different,
    cases to compare). Points are told apart by a legend keyed by colour and marker, never by
    text next to them, so nothing can overlap."""
    summaries = [t for t in S.technique_summaries(records) if t.metric("auroc")["n"]]
    shown = [t for t in summaries if t.granularity == "node" and len(t.cases) >= COST_QUALITY_MIN_CASES]
    if not shown:
        return None
    colours = technique_colours(t.technique for t in shown)
    seeds = {r.seed for t in shown for r in t.runs}
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, t in enumerate(shown):
        # a technique that never runs the model (weight statistics) sits at the axis' left end
        x, y = max(sum(t.passes), 0.5), t.metric("auroc")["mean"]
        ax.scatter([x], [y], s=30, color=colours[t.technique], marker=MARKERS[i % len(MARKERS)],
                   edgecolors="black", linewidths=0.4, label=f"{t.technique} ({len(t.cases)} cases)",
                   zorder=3)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.01, 2, 50: not 10^-2, 2x10^0
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("forward + backward passes over the prompts per run (log scale; 0 drawn at 0.5)")
    ax.set_ylabel("mean AUROC over the cases run")
    left_out = len(summaries) - len(shown)
    ax.set_title(f"All cases, {_seeds_text(seeds)}: cost against quality of node-level techniques on "
                 f"\u2265{COST_QUALITY_MIN_CASES} cases\nmean AUROC over the cases run (dotted: chance) "
                 "against passes over the prompts per run (log)"
                 + (f"\n{left_out} technique label(s) at other granularities or on fewer cases not "
                    "shown (not comparable)" if left_out else ""))
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              ncol=1 if len(shown) <= 20 else 2)
    return _svg(fig)


# --- every component's score by rank ------------------------------------------------------------

@dataclass
class RankPanel:
    """What one panel of :func:`rank_plots` draws: one run's components in the order scoring
    ranks them. ``values`` are the ranking values (|score| for signed techniques, the score
    otherwise), descending; ``roles[i]`` is the role of ``components[i]`` (None: not truth).
    The noise band runs from the lowest non-truth value (``noise_low``) up to ``noise_high``,
    :func:`mibench.scoring.noise_ceiling` of the same values, the threshold a truth component
    must exceed to count as found (both None with no non-truth component)."""

    technique: str
    granularity: str
    seed: int
    components: list[str]
    values: np.ndarray
    roles: list[str | None]
    noise_low: float | None
    noise_high: float | None
    k: int
    auroc: float | None


def rank_panel(record: RunRecord, signed: bool) -> RankPanel:
    """The data behind one panel of :func:`rank_plots` (see :class:`RankPanel`)."""
    values = rank_for_scoring(pd.Series(record.scores, dtype="float64"), signed)
    # descending value, ties by name, so the panel is the same whatever order the scores came in
    order = sorted(values.index, key=lambda n: (-values[n], n))
    truth = record.truth_labels
    noise = values.drop([n for n in truth if n in values.index])
    low = high = None
    if noise.size:
        low, high = float(noise.min()), float(noise_ceiling(values, truth))
    return RankPanel(record.technique, record.granularity, record.seed, order,
                     values[order].to_numpy(), [truth.get(n) for n in order], low, high,
                     int(record.metrics.get("k") or len(truth)), record.metrics.get("auroc"))


RANK_PLOTS_MAX_COLUMNS = 5


def rank_plots(records: list[RunRecord], case: str) -> str | None:
    """For one case and its first seed, one panel per technique label with an ok run there, grouped
    by granularity (node first, each granularity on new rows): every component's ranking value
    against its rank, truth components coloured by role, the noise band shaded, k dashed."""
    runs = [r for r in S.ok(records) if r.case == case and r.scores and r.truth_labels]
    if not runs:
        return None
    seed = min(r.seed for r in runs)
    chosen: dict[str, RunRecord] = {}
    for r in sorted((r for r in runs if r.seed == seed), key=lambda r: (r.technique, r.prompt_sample)):
        chosen.setdefault(r.technique, r)  # the lowest prompt sample: the main tables' run
    from mibench.registry import scores_signed

    panels = [rank_panel(r, scores_signed(r.technique)) for r in chosen.values()]
    groups: dict[str, list[RankPanel]] = {}
    for panel in sorted(panels, key=lambda p: (_granularity_order(p.granularity), p.granularity, p.technique)):
        groups.setdefault(panel.granularity, []).append(panel)
    roles = sorted({role for r in chosen.values() for role in r.truth_labels.values()})
    colour = {role: ROLE_COLOURS[i % len(ROLE_COLOURS)] for i, role in enumerate(roles)}

    cols = min(RANK_PLOTS_MAX_COLUMNS, max(len(g) for g in groups.values()))
    layout = []  # (row, col, panel): every granularity starts a new row
    row = 0
    for group in groups.values():
        for i, panel in enumerate(group):
            layout.append((row + i // cols, i % cols, panel))
        row += -(-len(group) // cols)
    plt = _plt()
    fig, axes = plt.subplots(row, cols, figsize=(2.5 * cols, 2.1 * row + 0.9), squeeze=False)
    used = {(r, c) for r, c, _ in layout}
    for (r, c), ax in np.ndenumerate(axes):
        if (r, c) not in used:
            ax.axis("off")
    for r, c, panel in layout:
        _draw_rank_panel(axes[r, c], panel, colour)
    handles = [plt.Line2D([], [], linestyle="", marker="o", markersize=5, color=colour[role])
               for role in roles]
    handles += [plt.Line2D([], [], linestyle="", marker=".", markersize=4, color=NOT_TRUTH_COLOUR),
                plt.Rectangle((0, 0), 1, 1, color=NOT_TRUTH_COLOUR, alpha=0.25, linewidth=0),
                plt.Line2D([], [], linestyle="--", color="black", linewidth=0.8)]
    legend_labels = [*roles, "not truth", "non-truth noise, up to the found threshold",
                     "top-k cut (k: size of the truth set)"]
    ncol = min(4, len(legend_labels))
    fig.legend(handles, legend_labels, loc="lower center", ncol=ncol, frameon=False)
    fig.suptitle(f"{case}, seed {seed}: every component's score by rank (truth coloured by role, "
                 "grey band: non-truth noise up to the found threshold)")
    legend_rows = -(-len(legend_labels) // ncol)
    fig.tight_layout(rect=(0, min(0.4, 0.25 * legend_rows / fig.get_figheight()), 1,
                           1 - min(0.2, 0.35 / fig.get_figheight())))
    return _svg(fig)


def _draw_rank_panel(ax, panel: RankPanel, colour: dict[str, str]) -> None:
    from matplotlib.ticker import MaxNLocator

    ranks = np.arange(1, len(panel.values) + 1)
    truth = np.array([role is not None for role in panel.roles])
    if panel.noise_low is not None:
        ax.axhspan(panel.noise_low, panel.noise_high, color=NOT_TRUTH_COLOUR, alpha=0.25, linewidth=0, zorder=0)
    # every component as one curve (score against rank), not a marker each: an edge panel has
    # hundreds of components, and one path per panel keeps the page small
    ax.plot(ranks, panel.values, color=NOT_TRUTH_COLOUR, linewidth=0.8, zorder=2)
    ax.scatter(ranks[truth], panel.values[truth], s=16, zorder=3, linewidths=0.3, edgecolors="black",
               color=[colour[role] for role in panel.roles if role is not None])
    ax.axvline(panel.k + 0.5, color="black", linestyle="--", linewidth=0.8, zorder=1)
    # Symmetric log, linear up to the larger of |noise floor| and |threshold|: a log scale cannot
    # show zeros or negative (unsigned) scores, and a linear one flattens the noise band to a line
    # whenever one truth component is orders of magnitude above it, which hides exactly what the
    # panel is for (does each truth component clear the band?). With the band in the linear part,
    # its width and what sits just above it stay readable while large values are compressed.
    _symlog_y(ax, panel)
    ax.set_xlim(0, len(ranks) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.tick_params(labelsize=6)
    auroc = "-" if panel.auroc is None else f"{panel.auroc:.2f}"
    ax.set_title(f"{panel.technique}\n{panel.granularity}, AUROC {auroc}, k = {panel.k}", fontsize=7)
    ax.set_xlabel("rank", fontsize=6, labelpad=1)


def _symlog_y(ax, panel: RankPanel) -> None:
    """Symmetric log y axis, linear up to the larger of |noise floor| and |threshold|, with limits
    that keep every marker inside and plain-number ticks. Why: a log scale cannot show zeros or
    negative (unsigned) scores, and a linear one flattens the noise band to a line whenever one
    truth component is orders of magnitude above it, hiding exactly what the panel is for (does
    each truth component clear the band?). With the band in the linear part, its width and what
    sits just above it stay readable while large values are compressed."""
    from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

    values = panel.values[np.isfinite(panel.values)]
    band = [v for v in (panel.noise_low, panel.noise_high) if v is not None and np.isfinite(v)]
    linthresh = (max((abs(v) for v in band), default=0.0)
                 or (float(np.abs(values).max()) if values.size else 0.0) or 1.0)
    ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    points = [*values, *band] or [0.0]
    transform = ax.yaxis.get_transform()
    lo, hi = transform.transform(np.array([[min(points)], [max(points)]], dtype=float)).ravel()
    pad = 0.08 * (hi - lo) if hi > lo else 0.5
    ylo, yhi = transform.inverted().transform(np.array([[lo - pad], [hi + pad]])).ravel()
    ax.set_ylim(float(ylo), float(yhi))
    candidates = SymmetricalLogLocator(linthresh=linthresh, base=10, subs=(1.0, 2.0, 5.0)).tick_values(ylo, yhi)
    # keep ticks at least an eighth of the axis apart: 0 first, then powers of ten, largest first
    candidates = sorted((t for t in candidates if ylo <= t <= yhi),
                        key=lambda t: (t != 0, not _power_of_ten(t), -abs(t), t))
    ticks: list[float] = []
    for t in candidates:
        at = transform.transform(np.array([[t]], dtype=float)).item()
        if all(abs(at - transform.transform(np.array([[u]], dtype=float)).item()) >= (hi - lo + 2 * pad) / 8
               for u in ticks):
            ticks.append(float(t))
    ax.set_yticks(sorted(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.minorticks_off()


def _power_of_ten(value: float) -> bool:
    return value != 0 and float(np.log10(abs(value))).is_integer()


# --- traps --------------------------------------------------------------------------------------

def trap_shares(records: list[RunRecord]) -> dict[str, list[tuple[str, float, int]]]:
    """Trap case → (technique label, share of seeds fooled, seeds) per label with an ok, judged run
    on it, node level first and then the other granularities, each by label. A seed counts once
    (its lowest prompt sample: the main tables' run)."""
    per_seed: dict[tuple[str, str, int], RunRecord] = {}
    for r in sorted(S.ok(records), key=lambda r: r.prompt_sample):
        if r.case_tier == "trap" and r.metrics.get("fooled") is not None:
            per_seed.setdefault((r.case, r.technique, r.seed), r)
    grouped: dict[tuple[str, str], list[RunRecord]] = {}
    for (case, tech, _), r in per_seed.items():
        grouped.setdefault((case, tech), []).append(r)
    out: dict[str, list[tuple[str, float, int, str]]] = {}
    for (case, tech), runs in grouped.items():
        share = float(np.mean([bool(r.metrics["fooled"]) for r in runs]))
        out.setdefault(case, []).append((tech, share, len(runs), runs[0].granularity))
    return {case: [row[:3] for row in sorted(rows, key=lambda t: (_granularity_order(t[3]), t[3], t[0]))]
            for case, rows in sorted(out.items())}


TRAP_MAX_COLUMNS = 3


def trap_verdicts(records: list[RunRecord]) -> str | None:
    """One panel per trap case: per technique label, the share of its seeds on which it was fooled,
    red where most seeds were, green otherwise."""
    shares = trap_shares(records)
    if not shares:
        return None
    plt = _plt()
    cols = min(TRAP_MAX_COLUMNS, len(shares))
    rows = -(-len(shares) // cols)
    longest = max(len(tech) for bars in shares.values() for tech, _, _ in bars)
    most = max(len(bars) for bars in shares.values())
    # room per panel: the bars (0.2 in each) plus the title and x axis; labels' width from their length
    fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                             figsize=(cols * (1.9 + 0.055 * longest), rows * (0.2 * most + 0.9) + 0.3))
    for ax in axes.flat[len(shares):]:
        ax.axis("off")
    for ax, (case, bars) in zip(axes.flat, shares.items()):
        y = np.arange(len(bars))
        values = [share for _, share, _ in bars]
        ax.barh(y, values, height=0.7,
                color=[FOOLED_COLOUR if share > 0.5 else NOT_FOOLED_COLOUR for share in values])
        for i, (_, share, n) in enumerate(bars):
            ax.text(share + 0.02, i, f"{round(share * n)}/{n}", va="center", fontsize=6)
        ax.set_yticks(y, [tech for tech, _, _ in bars], fontsize=7)
        ax.set_ylim(len(bars) - 0.5, -0.5)  # first label on top
        ax.set_xlim(0, 1.25)
        ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("share of seeds fooled", fontsize=7)
        ax.set_title(case, fontsize=8)
    fig.suptitle("Traps: share of seeds on which each technique was fooled (all seeds)")
    return _svg(fig)
