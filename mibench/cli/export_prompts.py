"""``mibench export-prompts``: one case's prompts at one seed, saved as a Hugging Face dataset
(see mibench.prompt_export)."""
from __future__ import annotations

from mibench.cli.common import add_model_path

HELP = "save a case's test and train prompts at one seed as a Hugging Face dataset (datasets.load_from_disk)"


def add_arguments(parser) -> None:
    from mibench.api import DEFAULT_SIZE
    from mibench.cli.common import positive_int

    parser.add_argument("--case", required=True, help="one case name, e.g. induction or gpt2_ioi")
    parser.add_argument("--seed", type=int, default=0, help="the instance's seed, >= 0 (default: 0)")
    parser.add_argument("--size", default=DEFAULT_SIZE,
                        help=f"model size, checked against the case's sizes; prompts do not depend on it "
                        f"(default: {DEFAULT_SIZE})")
    parser.add_argument("--n", type=positive_int, default=None,
                        help="test prompts (default: the case's own number, as runs use)")
    add_model_path(parser)
    parser.add_argument("folder", help="an empty or new folder to write the dataset into")


def main(args) -> int:
    from mibench.api import MibenchError
    from mibench.cli.common import apply_model_path, case_names
    from mibench.prompt_export import export_prompts
    from mibench.registry import load_case
    from mibench.runner import N_TRAIN_PROMPTS

    apply_model_path(args)
    names = case_names(args.case)
    if len(names) != 1:
        raise MibenchError(f"--case names {len(names)} cases ({', '.join(names)}); export-prompts takes one")
    if args.seed < 0:
        raise MibenchError(f"--seed must be >= 0, got {args.seed}")
    case = load_case(names[0])
    folder = export_prompts(case, args.seed, args.folder, args.size, args.n)
    n = case.n_prompts if args.n is None else args.n
    print(f"wrote {n} test and {N_TRAIN_PROMPTS} train prompts of {case.name} (seed {args.seed}, size "
          f"{args.size}) to {folder}; load them with datasets.load_from_disk({str(folder)!r})")
    return 0
