"""``mibench verify``: measure and print each case's ground-truth certificate."""
from __future__ import annotations

HELP = "verify each case's ground truth by intervention and print its certificate"


def add_arguments(parser) -> None:
    parser.add_argument("--case", default="all", help="case name(s), comma-separated (default: all)")
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 (default: 0-4)")


def main(args) -> int:
    from tabulate import tabulate

    from mibench.certificate import THRESHOLDS
    from mibench.cli.common import case_names, parse_seeds
    from mibench.registry import load_case
    from mibench.runner import prepare

    seeds = parse_seeds(args.seeds)
    failed = 0
    print("thresholds: " + ", ".join(f"{k} {v:g}" for k, v in THRESHOLDS.items()))
    for name in case_names(args.case):
        case = load_case(name)
        for seed in seeds:
            cert = prepare(case, seed).certificate
            verdict = "PASS" if cert.passed else "FAIL"
            print(f"\n{name} seed {seed}: {verdict}")
            print(tabulate(cert.rows(), headers=["check", "value", "needs", "", "what it measures"],
                           disable_numparse=True))
            failed += not cert.passed
    print(f"\n{failed} certificate(s) failed" if failed else "\nall certificates passed")
    return 1 if failed else 0
