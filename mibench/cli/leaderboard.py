"""``mibench leaderboard``: regenerate LEADERBOARD.md from the result files (a pure function)."""
from __future__ import annotations

from pathlib import Path

from mibench.api import LEADERBOARD_SIZE, SIZES, MibenchError

HELP = "write LEADERBOARD.md and report.html from the stored results"


def add_arguments(parser) -> None:
    from mibench.cli.common import COMMITTED_LEADERBOARD, COMMITTED_RESULTS, DEFAULT_RESULTS

    parser.add_argument("--results", default=DEFAULT_RESULTS, help=f"results folder (default: {DEFAULT_RESULTS})")
    parser.add_argument("--out", default=None,
                        help="output folder (default: the results folder); maintainers regenerate the "
                             f"committed leaderboard with --results {COMMITTED_RESULTS} --out "
                             f"{COMMITTED_LEADERBOARD}")
    parser.add_argument("--size", choices=SIZES, default=LEADERBOARD_SIZE,
                        help=f"the model size whose results to show (default: {LEADERBOARD_SIZE})")


def main(args) -> int:
    from mibench.report.figures import head_heatmaps
    from mibench.report.html import render_report
    from mibench.report.markdown import render_leaderboard, render_runtimes
    from mibench.report.summary import main_sample
    from mibench.results import load_records
    from mibench.imported import load as load_imported
    from mibench.verification.track import load_records as load_verification

    records, excluded = load_records(args.results)
    other_sizes = sum(r.size != args.size for r in records)
    records = [r for r in records if r.size == args.size]
    if not records:
        raise MibenchError(f"no {args.size} results under {args.results}; run `mibench run --size "
                           f"{args.size}` first or pass --size")
    if len({r.seeds_private for r in records}) > 1:
        raise MibenchError(f"{args.results} mixes results on private seeds (--seed-salt) with results "
                           f"on public ones; keep them in separate --results folders")
    out = Path(args.out or args.results)
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "LEADERBOARD.md", out / "report.html"
    verification = [r for r in load_verification(args.results) if r.size == args.size]
    imported = load_imported(args.results)  # scored from files: no model, no size
    md.write_text(render_leaderboard(records, excluded, verification, imported))
    page.write_text(render_report(records, excluded, verification, imported))
    (out / "RUNTIMES.md").write_text(render_runtimes(records, verification))
    figures = out / "figures"  # the per-case heat maps as files, for READMEs and papers
    figures.mkdir(exist_ok=True)
    for case in sorted({r.case for r in records}):
        svg = head_heatmaps(main_sample(records), case)
        if svg:
            (figures / f"{case}_heatmap.svg").write_text(svg)
    print(f"wrote {md}, {page}, {out / 'RUNTIMES.md'} and {figures}/ from {len(records)} {args.size} results "
          f"({len(excluded)} excluded, {other_sizes} at other sizes not shown)"
          + (f" and {len(verification)} verification records" if verification else "")
          + (f" and {len(imported)} imported results" if imported else ""))
    return 0
