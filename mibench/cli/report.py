"""``mibench report``: a terminal drill-down of one run — ranked components with their truth roles,
the failures, and the case's certificate."""
from __future__ import annotations

HELP = "print one run in detail: ranked components, failures, certificate"


def add_arguments(parser) -> None:
    from mibench.api import LEADERBOARD_SIZE, SIZES
    from mibench.cli.common import DEFAULT_RESULTS

    parser.add_argument("--technique", required=True, help="technique label, e.g. dla or causal_tracing@site")
    parser.add_argument("--case", required=True, help="case name")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--prompt-sample", type=int, default=0,
                        help="which prompt sample of the instance (default: 0)")
    parser.add_argument("--size", choices=SIZES, default=LEADERBOARD_SIZE,
                        help=f"model size of the run (default: {LEADERBOARD_SIZE})")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help=f"results folder (default: {DEFAULT_RESULTS})")
    parser.add_argument("--top", type=int, default=15, help="how many ranked components to show (default: 15)")


def main(args) -> int:
    from tabulate import tabulate

    from mibench.api import MibenchError
    from mibench.certificate import needs
    from mibench.metrics import applicable, format_value
    from mibench.registry import unknown_name_error
    from mibench.results import load_record, load_records, result_path

    path = result_path(args.results, args.technique, args.case, args.seed, args.prompt_sample, args.size)
    if not path.is_file():
        records, _ = load_records(args.results)
        runs = sorted({(r.technique, r.case) for r in records})
        if not any(t == args.technique for t, _ in runs):
            raise unknown_name_error("technique (in the results)", args.technique, sorted({t for t, _ in runs}))
        if not any(t == args.technique and c == args.case for t, c in runs):
            raise unknown_name_error(f"case for {args.technique} (in the results)", args.case,
                                     sorted({c for t, c in runs if t == args.technique}))
        raise MibenchError(f"no {args.size} result for {args.technique} on {args.case} seed {args.seed}; "
                           f"run `mibench run --technique {args.technique} --case {args.case} "
                           f"--seeds {args.seed} --size {args.size}`")
    record = load_record(path)
    metrics, truth = record.metrics, record.truth_labels
    print(f"{record.technique} on {record.case} seed {record.seed} ({record.granularity}): "
          f"{record.status}" + (f" — {record.error}" if record.error else ""))
    if record.status == "ok":
        shown = [f"{m.label} {format_value(metrics[m.name])}" for m in applicable(record.granularity)
                 if metrics.get(m.name) is not None]
        print("  " + ", ".join(shown)
              + f"   k = {metrics['k']}, runtime {record.runtime_s:.2f}s, "
                f"passes {record.forward_passes:g} fwd + {record.backward_passes:g} bwd")
        from mibench.registry import scores_signed

        signed = scores_signed(record.technique)
        # the order scoring ranked by: magnitude for signed effects, the score itself otherwise
        ranked = sorted(record.scores.items(), key=lambda kv: -abs(kv[1]) if signed else -kv[1])
        rows = [[i + 1, name, f"{value:+.4f}", truth.get(name, ""), "◀ truth" if name in truth else ""]
                for i, (name, value) in enumerate(ranked[: args.top])]
        print("\nRanked components (" + ("by |score|: the technique's scores are signed effects)"
                                         if signed else "by score)"))
        print(tabulate(rows, headers=["rank", "component", "score", "truth role", ""], disable_numparse=True))
        missed = metrics["failures"]["missed"]
        print("\nMissed truth components: " + (", ".join(f"{m['component']} ({m['role']}, rank {m['rank']})"
                                                       for m in missed) or "none"))
        fps = metrics["failures"]["false_positives"]
        print("Top false positives: " + (", ".join(f"{f['component']} (rank {f['rank']})" for f in fps) or "none"))
        if metrics.get("recall_by_role"):
            print("Found by role (in the top k and above the non-truth noise ceiling): "
                  + ", ".join(f"{r} {v:.2f}" for r, v in metrics["recall_by_role"].items()))
        if "fooled" in metrics:
            print("Trap verdict: " + ("FOOLED — " + metrics["fooled_reason"] if metrics["fooled"] else "not fooled"))
    cert = record.certificate
    if cert:
        print(f"\nCertificate ({'pass' if cert['passed'] else 'FAIL'}"
              f"{'; measured against references, flags do not gate' if not all(c.get('gates', True) for c in cert['checks']) else ''})")
        print(tabulate([[c["name"], "-" if c["value"] is None else f"{c['value']:.3f}", needs(c["op"], c["threshold"]),
                         c.get("verdict") or ("pass" if c["passed"] else "FAIL")] for c in cert["checks"]],
                       headers=["check", "value", "needs", ""], disable_numparse=True))
    return 0


