"""A case's prompts as a Hugging Face dataset on disk (``mibench export-prompts``), for use outside
the suite: the very prompts a run of the case at that seed reads.

Any case exports the columns of its ``PromptSet``: ``clean_ids``, ``corrupted_ids``, ``answer_id``,
``wrong_id``, one ``pos_<label>`` per position label and one ``var_<name>`` per declared variable,
and with a tokenizer (the literature tier's cases have one; planted cases speak integer
vocabularies) the decoded ``prompt``, ``corrupted_prompt``, ``answer`` and ``wrong``. A case with
a ``dataset(n, seed, split)`` method (``gpt2_ioi``) exports that dataset instead, which keeps what
a PromptSet drops (templates, names).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mibench.api import DEFAULT_SIZE, Case, MibenchError, PromptSet


def prompt_set_to_dataset(prompts: PromptSet, tokenizer: Any = None, description: str = ""):
    """``prompts`` as a ``datasets.Dataset`` of one row per prompt, split ``prompts.split``."""
    import datasets

    columns: dict[str, list] = {"clean_ids": prompts.clean.tolist(), "corrupted_ids": prompts.corrupted.tolist(),
                                "answer_id": prompts.answer.tolist(), "wrong_id": prompts.wrong.tolist()}
    columns.update({f"pos_{label}": value.tolist() for label, value in prompts.positions.items()})
    columns.update({f"var_{name}": value.tolist() for name, value in prompts.variables.items()})
    if tokenizer is not None:
        # decoded as the model reads them, BOS included
        columns.update(prompt=tokenizer.batch_decode(prompts.clean.tolist()),
                       corrupted_prompt=tokenizer.batch_decode(prompts.corrupted.tolist()),
                       answer=[tokenizer.decode([t]) for t in prompts.answer.tolist()],
                       wrong=[tokenizer.decode([t]) for t in prompts.wrong.tolist()])
    return datasets.Dataset.from_dict(columns, info=datasets.DatasetInfo(description=description),
                                      split=prompts.split)


def export_prompts(case: Case, seed: int, folder: str | Path, size: str = DEFAULT_SIZE,
                   n: int | None = None) -> Path:
    """Save the test prompts (``n``, default the case's ``n_prompts``) and the train prompts of
    the instance of ``seed`` into the empty or new ``folder``, as a ``datasets.DatasetDict`` with
    keys ``test`` and ``train`` (read it back with ``datasets.load_from_disk(folder)``).

    Prompt sample 0, as the runner draws. The instance itself is not built: a case's prompts are
    a function of the seed it is built from (``Instance.seed``), so neither a model nor, for the
    literature tier, GPT-2's weights are needed (its tokenizer is). ``size`` is checked and
    recorded; prompts do not depend on it."""
    import datasets

    from mibench.runner import N_TRAIN_PROMPTS, instance_seed

    case.check_size(size)
    n = case.n_prompts if n is None else n
    if n < 1:
        raise MibenchError(f"the number of prompts must be at least 1, got {n}")
    folder = Path(folder)
    _refuse_non_empty(folder)
    counts = {"test": n, "train": N_TRAIN_PROMPTS}
    # the runner's seed for an instance (prepare: case.build(instance_seed(seed), size).seed)
    build_seed = instance_seed(seed)
    splits = datasets.DatasetDict({split: _split_dataset(case, count, build_seed, split, size)
                                   for split, count in counts.items()})
    splits.save_to_disk(str(folder))
    return folder


def _refuse_non_empty(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MibenchError(f"{str(folder)!r} exists and is not an empty folder; nothing was written: "
                           f"pick an empty or new folder for the prompts")


def _split_dataset(case: Case, n: int, seed: int, split: str, size: str):
    own = getattr(case, "dataset", None)
    if own is not None:  # the case's own dataset: text, templates and names besides the ids
        return own(n, seed, split)
    tokenizer = getattr(case, "tokenizer", None)
    description = f"mibench case {case.name} (version {case.version}), seed {seed}, size {size}, split {split}"
    return prompt_set_to_dataset(case.prompts(n, seed, split), tokenizer() if tokenizer else None, description)
