"""``mibench verify``: measure and print each case's ground-truth certificate and its fingerprint
audit, at every size the case builds."""
from __future__ import annotations

from mibench.cli.common import add_model_path

HELP = "verify each case's ground truth by intervention and audit it against non-interpretability baselines"


def add_arguments(parser) -> None:
    from mibench.fingerprint import SEEDS

    parser.add_argument("--case", default="all",
                        help="case name(s), comma-separated, or patterns such as 'trap_*' (default: all "
                        "cases the suite builds; the literature tier's gpt2_* cases run when named)")
    add_model_path(parser)
    parser.add_argument("--seeds", default="0-4", help="seeds to certify, e.g. 0-4 (default: 0-4)")
    parser.add_argument("--size", default="all",
                        help="model size(s), comma-separated, or 'all' (default: every size the case builds)")
    parser.add_argument("--audit-seeds", default=f"{SEEDS[0]}-{SEEDS[-1]}",
                        help=f"seeds pooled by the fingerprint audit (default: {SEEDS[0]}-{SEEDS[-1]})")
    parser.add_argument("--skip-audit", action="store_true",
                        help="certificates only; the audit is reported as skipped")


def main(args) -> int:
    from mibench.api import LEADERBOARD_SIZE
    from mibench.certificate import THRESHOLDS
    from mibench.cli.common import apply_model_path, case_names, parse_seeds
    from mibench.fingerprint import BAND
    from mibench.registry import load_case

    apply_model_path(args)
    seeds = parse_seeds(args.seeds)
    audit_seeds = parse_seeds(args.audit_seeds)
    cases = [load_case(name) for name in case_names(args.case)]
    # a literature case has one model whatever the size: 'all' certifies it once
    every = lambda case: [LEADERBOARD_SIZE] if case.tier == "literature" else case.sizes  # noqa: E731
    plan = [(case, size) for case in cases for size in (every(case) if args.size == "all" else args.size.split(","))]
    for case, size in plan:  # every size is checked before anything runs
        case.check_size(size)
    print("thresholds: " + ", ".join(f"{k} {v:g}" for k, v in THRESHOLDS.items())
          + f"; fingerprint audit: every statistic's pooled AUROC in [{BAND[0]:g}, {BAND[1]:g}]")
    failed = []
    for case, size in plan:
        failed += _verify(case, size, seeds, audit_seeds, args)
    if failed:
        print(f"\n{len(failed)} failed: " + "; ".join(failed))
        return 1
    print("\nall certificates" + ("" if args.skip_audit else " and audits") + " passed")
    return 0


def _verify(case, size: str, seeds: list[int], audit_seeds: list[int], args) -> list[str]:
    """Print one case's certificates, truth-edge effects and audit at one size; return what failed."""
    from tabulate import tabulate

    from mibench.certificate import EDGE_NIL, edge_effects
    from mibench.fingerprint import audit
    from mibench.runner import prepare

    name, failed, preps = f"{case.name} ({size})", [], []
    for seed in seeds:
        prep = prepare(case, seed, size=size)
        preps.append(prep)
        cert = prep.certificate
        print(f"\n{name} seed {seed}: {'PASS' if cert.passed else 'FAIL'}")
        print(tabulate(cert.rows(), headers=["check", "value", "needs", "", "what it measures"],
                       disable_numparse=True))
        if not cert.passed:
            failed.append(f"{name} seed {seed} certificate")
        flags = [c.name for c in cert.checks if not c.gates and not c.passed]
        if flags:
            print(f"{len(flags)} measurement(s) contradict or fall short of the paper's account "
                  f"(flagged, not failed: {', '.join(flags)})")
    if "edge" in case.granularities:
        effects = edge_effects(preps)
        print(f"\n{name} truth edges by path patching (share of the clean metric over seeds "
              f"{args.seeds}; nil: below {EDGE_NIL:g} on every seed; circuit.yaml must label each "
              f"nil edge nil or redundant, and no other):")
        print(tabulate([e.row() for e in effects], headers=["edge", "mean", "max |share|", ""],
                       disable_numparse=True))
        print(f"{sum(e.nil for e in effects)} of {len(effects)} truth edges are nil under this corruption")
        wrong = [f"{e.source} -> {e.destination} <{e.kind}>" for e in effects if not e.consistent]
        if wrong and case.tier == "literature":
            print(f"flagged, not failed (the paper's edges, measured on these weights): {', '.join(wrong)}")
        elif wrong:
            failed.append(f"{name} edge labels ({', '.join(wrong)})")
    if case.tier == "literature":
        print(f"\n{name} fingerprint audit: not run (the literature tier's labels are the paper's account "
              f"of a trained model, not planted; the audit tests planted ground truth)")
        return failed
    if args.skip_audit:
        print(f"\n{name} fingerprint audit: skipped (--skip-audit)")
        return failed
    result = audit(case, audit_seeds, size)
    print(f"\n{name} fingerprint audit over seeds {args.audit_seeds} (AUROC of each task-agnostic "
          f"statistic against the truth nodes): {'PASS' if result.passed else 'FAIL'}")
    print(tabulate(result.table(), headers=["statistic", "AUROC", "needs", "", "pooled over"],
                   disable_numparse=True))
    if not result.passed:
        failed.append(f"{name} fingerprint audit ({', '.join(r.statistic for r in result.failed())})")
    return failed
