"""``mibench leaderboard``: regenerate LEADERBOARD.md from the result files (a pure function)."""
from __future__ import annotations

from pathlib import Path

HELP = "write LEADERBOARD.md from the stored results"


def add_arguments(parser) -> None:
    from mibench.cli.common import DEFAULT_RESULTS

    parser.add_argument("--results", default=DEFAULT_RESULTS, help=f"results folder (default: {DEFAULT_RESULTS})")
    parser.add_argument("--out", default="leaderboard", help="output folder (default: leaderboard)")


def main(args) -> int:
    from mibench.report.markdown import render_leaderboard
    from mibench.results import load_records

    records, excluded = load_records(args.results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "LEADERBOARD.md"
    path.write_text(render_leaderboard(records, excluded))
    print(f"wrote {path} from {len(records)} results ({len(excluded)} excluded)")
    return 0
