"""``mibench run``: the (technique × case × seed) grid, recorded one JSON file per run."""
from __future__ import annotations

import json
import sys

from mibench.cli.common import add_model_path

HELP = "run techniques on known circuits and record scored results"


SALT_ENV = "MIBENCH_SEED_SALT"


def add_arguments(parser) -> None:
    from mibench.api import LEADERBOARD_SIZE, SIZES
    from mibench.cli.common import DEFAULT_RESULTS, positive_float, positive_int
    from mibench.executors import EXECUTORS
    from mibench.sandbox import DEFAULT_MEMORY_GB, DEFAULT_TIMEOUT_S

    parser.add_argument("--technique", required=True,
                        help="technique name(s), comma-separated ('name@granularity' for one granularity), "
                             "'all', or a path to an adapter .py file")
    parser.add_argument("--case", default="all",
                        help="case name(s), comma-separated, or patterns such as 'trap_*' (default: all "
                        "cases the suite builds; the literature tier's gpt2_* cases run when named)")
    add_model_path(parser)
    parser.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,3 (default: 0-4)")
    parser.add_argument("--prompt-samples", default="0",
                        help="independent prompt samples per seed, e.g. 0-2 (default: 0); the "
                             "leaderboard's main tables use sample 0 and report how AUROC varies "
                             "across the others")
    parser.add_argument("--size", choices=SIZES, default=LEADERBOARD_SIZE,
                        help=f"model size of every case (default: {LEADERBOARD_SIZE}); results record it")
    parser.add_argument("--results", default=DEFAULT_RESULTS,
                        help=f"folder for result files (default: {DEFAULT_RESULTS})")
    parser.add_argument("--force", action="store_true",
                        help="rerun every run; by default a run whose result file is complete and current "
                             "(same technique and case versions, same truth; not an error) is kept")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="(case, seed) units run at once in a local process pool (default: the "
                             "machine's cores); results do not depend on it")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="'local' (a process pool) or 'ray' (Ray tasks; pip install \"mibench[ray]\")")
    parser.add_argument("--address", default=None,
                        help="with --executor ray: the cluster to join (e.g. auto or ray://host:10001); "
                             "default: start a local one")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds one run may take before it is stopped and recorded as an error "
                             f"(default: {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--memory-limit", type=positive_float, default=DEFAULT_MEMORY_GB,
                        help=f"GiB one run may allocate beyond its worker's own before it fails as an "
                             f"error (default: {DEFAULT_MEMORY_GB:g})")
    parser.add_argument("--seed-salt", default=None,
                        help=f"build instances from private seeds derived from this secret (or set "
                             f"{SALT_ENV}): a held-out leaderboard nobody can rebuild; results record "
                             f"that seeds were private, never the salt")
    parser.add_argument("--faithfulness-optimal", action="store_true",
                        help="also score node-level runs' faithfulness with every other node replaced "
                             "by its optimal constant (Li & Janson 2024), fitted per node on the train "
                             "prompts; costs a fit per (case, seed) (tens of seconds at medium)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar (or, when not on a terminal, the progress lines)")


def summary_table(records) -> str:
    """One row per run: its status, the table's metric columns for these runs' granularities
    (from mibench.metrics), the runtime and the passes."""
    from tabulate import tabulate

    from mibench.metrics import columns, format_value, measured

    shown = columns({r.granularity for r in records}, measured(r.metrics for r in records))
    rows = [[r.technique, r.case, r.seed if not r.prompt_sample else f"{r.seed} (prompts {r.prompt_sample})",
             r.status, *[format_value(r.metrics.get(m.name)) for m in shown],
             f"{r.runtime_s:.2f}", f"{r.forward_passes:g}+{r.backward_passes:g}"] for r in records]
    return tabulate(rows, headers=["technique", "case", "seed", "status", *[m.label for m in shown],
                                   "time s", "passes f+b"], disable_numparse=True)


def main(args) -> int:
    from mibench.cli.common import apply_model_path, case_names, load_runs, parse_seeds, technique_names
    from mibench.registry import load_case

    apply_model_path(args)
    seeds = parse_seeds(args.seeds)
    samples = parse_seeds(args.prompt_samples, "prompt sample range")
    cases = [load_case(n) for n in case_names(args.case)]
    techniques = load_runs(technique_names(args.technique))

    import os

    from mibench.api import MibenchError
    from mibench.executors import default_jobs

    if args.address and args.executor != "ray":
        raise MibenchError("--address names a Ray cluster; add --executor ray")
    from mibench.runner import Execution, run_grid
    from mibench.sandbox import Limits

    execution = Execution(jobs=args.jobs or default_jobs(), executor=args.executor, address=args.address,
                          limits=Limits(args.timeout, args.memory_limit),
                          seed_salt=args.seed_salt or os.environ.get(SALT_ENV) or None,
                          faithfulness_optimal=args.faithfulness_optimal)

    n_kept, fresh = 0, []

    def emit(record, kept: bool) -> None:
        nonlocal n_kept
        n_kept += kept
        if not kept:
            fresh.append(record)
        if args.json:
            print(json.dumps(record.summary()), flush=True)

    # a terminal gets a progress bar; a pipe or a log file a line per finished (case, seed)
    terminal = sys.stderr.isatty()
    records = run_grid(techniques, cases, seeds, args.results,
                       progress=not args.no_progress and terminal, on_record=emit,
                       samples=samples, size=args.size, force=args.force, execution=execution,
                       log=None if args.no_progress or terminal else
                       (lambda line: print(line, file=sys.stderr, flush=True)))
    if not args.json:
        print(summary_table(records))
        for r in records:
            if r.status != "ok":
                sample = f" prompts {r.prompt_sample}" if r.prompt_sample else ""
                print(f"{r.technique} on {r.case} seed {r.seed}{sample}: {r.status}: {r.error}")
        kept = f"; {n_kept} current results kept as they were (--force reruns them)" if n_kept else ""
        print(f"\n{len(records) - n_kept} runs written to {args.results}/{kept}")
        if fresh:  # certification is timed apart: for most cases it, not the techniques, dominates
            certifying = {(r.case, r.seed, r.prompt_sample): r.certifying_s for r in fresh}
            print(f"time: building and certifying {len(certifying)} instance(s) "
                  f"{sum(certifying.values()):.1f} s; techniques {sum(r.runtime_s for r in fresh):.1f} s")
        if records:
            where = f" --size {args.size} --results {args.results}"
            print(f"next: mibench leaderboard{where}   (LEADERBOARD.md and report.html in {args.results}/)\n"
                  f"      mibench report --technique {records[0].technique} --case {records[0].case}"
                  f" --seed {records[0].seed}{where}   (one run in detail)")
    errors = [r for r in records if r.status == "error"]
    return 1 if errors else 0
