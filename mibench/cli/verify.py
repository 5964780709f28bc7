"""``mibench verify``: measure and print each case's ground-truth certificate and its fingerprint
audit."""
from __future__ import annotations

HELP = "verify each case's ground truth by intervention and audit it against non-interpretability baselines"


def add_arguments(parser) -> None:
    from mibench.fingerprint import SEEDS

    parser.add_argument("--case", default="all", help="case name(s), comma-separated (default: all)")
    parser.add_argument("--seeds", default="0-4", help="seeds to certify, e.g. 0-4 (default: 0-4)")
    parser.add_argument("--audit-seeds", default=f"{SEEDS[0]}-{SEEDS[-1]}",
                        help=f"seeds pooled by the fingerprint audit (default: {SEEDS[0]}-{SEEDS[-1]})")
    parser.add_argument("--skip-audit", action="store_true",
                        help="certificates only; the audit is reported as skipped")


def main(args) -> int:
    from tabulate import tabulate

    from mibench.certificate import EDGE_NIL, THRESHOLDS, edge_effects
    from mibench.cli.common import case_names, parse_seeds
    from mibench.fingerprint import BAND, audit
    from mibench.registry import load_case
    from mibench.runner import prepare

    seeds = parse_seeds(args.seeds)
    audit_seeds = parse_seeds(args.audit_seeds)
    failed = []
    print("thresholds: " + ", ".join(f"{k} {v:g}" for k, v in THRESHOLDS.items())
          + f"; fingerprint audit: every statistic's pooled AUROC in [{BAND[0]:g}, {BAND[1]:g}]")
    for name in case_names(args.case):
        case = load_case(name)
        preps = []
        for seed in seeds:
            prep = prepare(case, seed)
            preps.append(prep)
            cert = prep.certificate
            print(f"\n{name} seed {seed}: {'PASS' if cert.passed else 'FAIL'}")
            print(tabulate(cert.rows(), headers=["check", "value", "needs", "", "what it measures"],
                           disable_numparse=True))
            if not cert.passed:
                failed.append(f"{name} seed {seed} certificate")
        if "edge" in case.granularities:
            effects = edge_effects(preps)
            print(f"\n{name} truth edges by path patching (share of the clean metric over seeds "
                  f"{args.seeds}; nil: below {EDGE_NIL:g} on every seed; reported, not yet gated):")
            print(tabulate([e.row() for e in effects], headers=["edge", "mean", "max |share|", ""],
                           disable_numparse=True))
            nil = sum(e.nil for e in effects)
            print(f"{nil} of {len(effects)} truth edges are nil under this corruption")
        if args.skip_audit:
            print(f"\n{name} fingerprint audit: skipped (--skip-audit)")
            continue
        result = audit(case, audit_seeds)
        print(f"\n{name} fingerprint audit over seeds {args.audit_seeds} (AUROC of each task-agnostic "
              f"statistic against the truth nodes): {'PASS' if result.passed else 'FAIL'}")
        print(tabulate(result.table(), headers=["statistic", "AUROC", "needs", "", "pooled over"],
                       disable_numparse=True))
        if not result.passed:
            failed.append(f"{name} fingerprint audit ({', '.join(r.statistic for r in result.failed())})")
    if failed:
        print(f"\n{len(failed)} failed: " + "; ".join(failed))
        return 1
    print("\nall certificates" + ("" if args.skip_audit else " and audits") + " passed")
    return 0
