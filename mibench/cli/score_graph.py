"""``mibench score-graph``: score a circuit graph in the MIB format (for example one of MIB's
published circuits) against a case's ground truth, with the figures the leaderboard shows for a
run (:func:`mibench.mib.score_graph`)."""
from __future__ import annotations

HELP = "score an MIB-format circuit graph file against a case's ground truth"

#: the ranking metrics the table shows, by their name in mibench.metrics
SHOWN = ("auroc", "ap", "precision_at_k", "recall_at_k")

RULE_HELP = {
    "out": "sum of |score| over each head's and MLP's outgoing edges",
    "in+out": "sum of |score| over each head's and MLP's incoming and outgoing edges",
}


def add_arguments(parser) -> None:
    from mibench.api import LEADERBOARD_SIZE, SIZES
    from mibench.mib import NODE_RULES

    parser.add_argument("file", metavar="FILE", help="an MIB graph file (JSON: cfg, nodes, edges)")
    parser.add_argument("--case", required=True, help="the case whose truth to score against, e.g. gpt2_ioi")
    parser.add_argument("--seed", type=int, default=0,
                        help="the case's seed (default: 0; a literature case has one truth for every seed)")
    parser.add_argument("--size", choices=SIZES, default=None,
                        help=f"the case's model size (default: the case's only size if it builds one, "
                             f"else {LEADERBOARD_SIZE})")
    parser.add_argument("--rule", choices=NODE_RULES, default="out",
                        help="how node scores follow from MIB's edge scores (files that score their "
                             "nodes themselves keep their own): 'out' (default), the "
                             f"{RULE_HELP['out']}, since a node matters to the extent later components "
                             f"read what it writes, and removing a node removes exactly its outgoing "
                             f"edges; 'in+out', the {RULE_HELP['in+out']}")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--save", metavar="RESULTS", default=None,
                        help="also keep the figures under RESULTS/imported/, where `mibench leaderboard "
                             "--results RESULTS` shows them as an imported result (needs --label and --source)")
    parser.add_argument("--label", default=None, help="the imported result's name on the leaderboard, "
                        "e.g. 'eap_ig (MIB)'")
    parser.add_argument("--source", default=None, help="where the file comes from (repository and path, "
                        "paper), shown beside it")


def main(args) -> int:
    import json

    from mibench.mib import read_graph, score_graph
    from mibench.registry import load_case

    from mibench.api import MibenchError

    if args.save and not (args.label and args.source):
        raise MibenchError("--save keeps the figures as an imported result: say what it is with --label "
                           "and where it comes from with --source")
    graph = read_graph(args.file)  # first: a bad file should not wait for a model build
    case = load_case(args.case)
    size = args.size or default_size(case)
    truth, shape = case_truth_and_shape(case, args.seed, size)
    check_shape(args.file, graph.shape, shape, f"case {case.name} at size {size}")
    result = score_graph(graph, truth, args.rule)
    if args.save:
        from pathlib import Path

        from mibench.imported import ImportedResult, save

        saved = save(args.save, ImportedResult(args.label, args.source, Path(args.file).name, case.name, case.tier,
                                               args.seed, size, args.rule, result))
        print(f"saved as an imported result: {saved}")
    if args.json:
        print(json.dumps({"file": str(args.file), "case": case.name, "seed": args.seed, "size": size,
                          **result}, indent=1))
        return 0
    print(f"{args.file} against {case.name} seed {args.seed} ({size})")
    node_rule = result["node"]["node_rule"]
    print("Node scores: " + ("the file's own" if node_rule is None else
                             f"{RULE_HELP[node_rule]} (--rule {node_rule})") + "\n")
    print(table(result))
    if truth.labels("edge") and "edge" not in result:
        print("No edge row: the file scores nodes only.")
    return 0


def default_size(case) -> str:
    """The case's only size when it builds one (a literature case's one model), else the
    leaderboard's size, as the other commands default."""
    from mibench.api import LEADERBOARD_SIZE

    return case.sizes[0] if len(case.sizes) == 1 else LEADERBOARD_SIZE


def case_truth_and_shape(case, seed: int, size: str):
    """The truth of ``case``'s instance of ``seed`` at ``size`` and its model's shape. A case
    with a fixed model says its shape (``case.shape``, a literature case), so its truth needs no
    weights; a planted case's truth comes from building its instance anyway, and the built model
    gives the shape."""
    from mibench import names

    case.check_size(size)
    shape = getattr(case, "shape", None)
    if shape is not None:
        return case.truth(seed, size), shape
    instance = case.build(seed, size)
    return instance.truth, names.Shape.of(instance.model)


def check_shape(path, graph_shape, case_shape, what: str) -> None:
    """Raise a one-line error unless the graph describes the case's model: layers, heads, and
    MLPs or none (MIB files do not store d_mlp)."""
    from mibench.api import MibenchError
    from mibench.mib import describe_shape

    key = (graph_shape.n_layers, graph_shape.n_heads, graph_shape.has_mlp)
    if key != (case_shape.n_layers, case_shape.n_heads, case_shape.has_mlp):
        raise MibenchError(f"{path} is a graph of a {describe_shape(graph_shape)}, but {what} is a "
                           f"{describe_shape(case_shape)}; score it against the case (--case, --size) whose "
                           f"model it describes")


def table(result: dict) -> str:
    """One row per granularity: k, the ranking metrics at k = |truth|, the in-graph circuit."""
    from tabulate import tabulate

    from mibench.metrics import METRICS, format_value

    labels = {m.name: m.label for m in METRICS}
    rows = []
    for granularity, figures in result.items():
        circuit = figures["in_graph"]
        rows.append([granularity, figures["k"], *(format_value(figures[name]) for name in SHOWN),
                     circuit["size"], format_value(circuit["precision"]), format_value(circuit["recall"])])
    headers = ["granularity", "k (truth)", *(labels[name] for name in SHOWN),
               "in_graph size", "in_graph precision", "in_graph recall"]
    return tabulate(rows, headers=headers, disable_numparse=True)
