"""``mibench export-graph``: write one run's scores as a circuit graph in the MIB format, for MIB's
tools (and ``mibench score-graph``). An edge run writes every edge's score; a node run writes
each head's and MLP's score in the ``nodes`` section, which MIB's format has room for, with
``edges`` empty."""
from __future__ import annotations

HELP = "write a run's scores as an MIB-format circuit graph (edge runs: edges; node runs: nodes)"

#: in_graph size when the record does not say how large the truth set was
FALLBACK_TOP_N = 100


def add_arguments(parser) -> None:
    from mibench.api import LEADERBOARD_SIZE, SIZES
    from mibench.cli.common import DEFAULT_RESULTS, positive_int

    parser.add_argument("--technique", required=True,
                        help="technique label of the run, e.g. eap_ig or attribution_patching@edge")
    parser.add_argument("--case", required=True, help="case name")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--size", choices=SIZES, default=LEADERBOARD_SIZE,
                        help=f"model size of the run (default: {LEADERBOARD_SIZE})")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help=f"results folder (default: {DEFAULT_RESULTS})")
    parser.add_argument("--top-n", type=positive_int, default=None,
                        help="how many edges (nodes, for a node run) to mark in_graph, by |score| "
                             "(default: k, the size of the truth set the run was scored against, "
                             f"so the circuit is as large as the truth; {FALLBACK_TOP_N} when the "
                             "record does not hold it)")
    parser.add_argument("out", metavar="OUT", help="the graph file to write (JSON)")


def main(args) -> int:
    import pandas as pd

    from mibench import names
    from mibench.api import MibenchError
    from mibench.registry import scores_signed
    from mibench.mib import magnitude_ranked, write_graph, write_node_graph

    record = load_run(args)
    if record.status != "ok":
        raise MibenchError(f"the run of {record.technique} on {record.case} seed {record.seed} is "
                           f"{record.status!r}" + (f" ({record.error})" if record.error else "")
                           + "; it has no scores to export")
    writers = {"edge": write_graph, "node": write_node_graph}
    if record.granularity not in writers:
        raise MibenchError(f"an MIB graph holds edge or node scores; {record.technique} is a "
                           f"{record.granularity}-granularity run")
    top_n = args.top_n or len(record.truth_labels) or FALLBACK_TOP_N
    # MIB's readers rank by |score|; these values rank the components as scoring ranked them
    values = magnitude_ranked(pd.Series(record.scores, dtype="float64"), scores_signed(record.technique))
    writers[record.granularity](args.out, values, names.Shape(**record.shape),
                                model_width(record.case, record.seed, record.size), top_n)
    why = "--top-n" if args.top_n else (f"k, the truth's {record.granularity} count" if record.truth_labels
                                        else "the default; the record holds no truth set")
    print(f"wrote {args.out}: {len(values)} {record.granularity} scores of {record.technique} on "
          f"{record.case} seed {record.seed} ({record.size}), the top {top_n} by |score| in the "
          f"graph ({why})")
    return 0


def load_run(args):
    """The result file of (technique, case, seed, size) under ``--results``, or a one-line error
    naming the command that makes it."""
    from mibench.api import MibenchError
    from mibench.cli.common import DEFAULT_RESULTS
    from mibench.results import load_record, result_path

    path = result_path(args.results, args.technique, args.case, args.seed, size=args.size)
    if not path.is_file():
        where = "" if args.results == DEFAULT_RESULTS else f" --results {args.results}"
        raise MibenchError(f"no {args.size} result for {args.technique} on {args.case} seed "
                           f"{args.seed} in {args.results}/; run `mibench run --technique "
                           f"{args.technique} --case {args.case} --seeds {args.seed} --size "
                           f"{args.size}{where}`")
    return load_record(path)


def model_width(case_name: str, seed: int, size: str) -> int:
    """d_model of the run's model, which MIB's ``cfg`` records and a result file does not: from
    the case's model (built for a planted case; a literature case loads its checkpoint)."""
    from mibench.registry import load_case

    case = load_case(case_name)
    case.check_size(size)
    return int(case.build(seed, size).model.cfg.d_model)
