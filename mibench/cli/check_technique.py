"""``mibench check-technique``: the conformance suite for an adapter (see mibench.testing)."""
from __future__ import annotations

HELP = "run the conformance checks on a technique adapter (name or path to .py)"


def add_arguments(parser) -> None:
    parser.add_argument("technique", help="registered technique name or path to an adapter .py file")


def main(args) -> int:
    from mibench.cli.common import technique_names
    from mibench.testing import check_technique

    technique_names(args.technique)  # an unknown name is a one-line error, not a failed report
    report = check_technique(args.technique, verbose=True)
    return 0 if report.ok else 1
