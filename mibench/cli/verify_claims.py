"""``mibench verify-claims``: the verification track, each verifier's error rates on claims of known
status (the true circuit, incomplete, padded, swapped and random circuits)."""
from __future__ import annotations

import sys

HELP = "run circuit verifiers on claims of known status and report their false-acceptance and false-rejection rates"


def add_arguments(parser) -> None:
    from mibench.api import LEADERBOARD_SIZE, SIZES
    from mibench.cli.common import DEFAULT_RESULTS, positive_int

    parser.add_argument("--verifier", default="all",
                        help="verifier name(s) from verifiers/, comma-separated, or 'all' (default: all)")
    parser.add_argument("--case", default="all", help="case name(s), comma-separated (default: all)")
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,3 (default: 0-4)")
    parser.add_argument("--size", choices=SIZES, default=LEADERBOARD_SIZE,
                        help=f"model size of every case (default: {LEADERBOARD_SIZE})")
    parser.add_argument("--results", default=DEFAULT_RESULTS,
                        help=f"folder whose verification/ subfolder gets one record per (verifier, case, "
                             f"seed) (default: {DEFAULT_RESULTS})")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="(case, seed) instances judged at once in a process pool (default: the "
                             "machine's cores); figures do not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="no line per finished (case, seed)")


def main(args) -> int:
    from mibench.cli.common import case_names, parse_seeds
    from mibench.executors import default_jobs
    from mibench.registry import load_case
    from mibench.report.verification import render_markdown
    from mibench.verification import load_verifiers
    from mibench.verification.track import run_track

    verifiers = load_verifiers(args.verifier)
    seeds = parse_seeds(args.seeds)
    cases = [load_case(name) for name in case_names(args.case)]

    def progress(case, seed, records) -> None:
        if args.no_progress:
            return
        judged = sum(len(r.verdicts) for r in records)
        spent = sum(r.runtime_s for r in records)
        status = records[0].status if records else "-"
        print(f"{case.name} seed {seed}: {status}, {judged} verdicts, built and certified in "
              f"{records[0].certifying_s:.1f} s, verifiers {spent:.1f} s", file=sys.stderr)

    records = run_track(verifiers, cases, seeds, args.results, args.size, jobs=args.jobs or default_jobs(),
                        on_instance=progress)
    print(render_markdown(records))
    failed = [f"{r.verifier} on {r.case} seed {r.seed}: {r.error}" for r in records if r.status == "error"]
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failed else 0
