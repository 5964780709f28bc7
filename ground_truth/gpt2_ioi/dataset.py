"""The Indirect Object Identification prompts of Wang, Variengien, Conmy, Shlegeris and Steinhardt
2022, *Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small*
(arXiv:2211.00593), as a Hugging Face ``datasets.Dataset``.

The templates, names, places and objects are the paper's (its public ``ioi_dataset.py``, in
redwoodresearch/Easy-Transformer). A prompt is a template filled with two names, the indirect
object IO and the subject S, cut before the final IO: "Then, Mary and John went to the store. John
gave a drink to" (answer " Mary", wrong " John"). ``BABA`` templates name S first, their ``ABBA``
mirrors IO first. The corrupted prompt is the paper's ABC distribution: the same template, place
and object, with the three name slots filled by three other distinct names, so that no name repeats.

Departures from the paper, both because a mibench ``PromptSet`` holds prompts of one token length
and its metric reads the last position:

* only the templates whose tokenized prompt has the most common length are used, in both orders
  (:func:`equal_length_templates`; 7 of the 15 under a word-level tokenizer), where the paper
  mixes lengths and reads END prompt by prompt;
* only names, places and objects that the tokenizer encodes as one token after a space are used
  (the paper filters names the same way when it builds the ABC set).

Each prompt starts with the tokenizer's BOS token, as in the paper's experiments. The dataset's
split (``train`` or ``test``) is the ``datasets`` library's own ``Dataset.split``, which
``save_to_disk`` and ``load_from_disk`` keep.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from mibench.api import MibenchError, PromptSet, prompt_rng
from mibench.literature import LiteratureCase

#: Wang et al.'s 15 templates with the subject first (``[B]`` = S, ``[A]`` = IO); the final ``[A]``
#: is the answer, not part of the prompt.
BABA_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)


def _mirror(template: str) -> str:
    """The ABBA version of a BABA template: the first ``[B]`` and the first ``[A]`` swapped, as
    the paper derives its ABBA templates."""
    return template.replace("[B]", "[S]", 1).replace("[A]", "[B]", 1).replace("[S]", "[A]", 1)


#: the same templates with the indirect object first
ABBA_TEMPLATES = tuple(_mirror(template) for template in BABA_TEMPLATES)
ORDERS = ("ABBA", "BABA")

#: Wang et al.'s 99 first names (their ``NAMES``)
NAMES = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel",
    "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah",
    "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric",
    "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle",
    "Rachel", "Laura", "Lauren", "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy",
    "Crystal", "Michelle", "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca",
    "Jacob", "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin",
    "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa",
    "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon",
    "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison", "Bradley", "Samuel",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")

_SLOT = re.compile(r"\[(A|B|PLACE|OBJECT)\]")
_NAME_SLOT = re.compile(r"\[(A|B)\]")
#: names a prompt needs: IO, S and the three other names of its corrupted version
NAMES_PER_PROMPT = 5


def vocabulary() -> list[str]:
    """Every word and punctuation mark a prompt can contain, first appearance first (for a test
    tokenizer to cover)."""
    template_words = [word for template in BABA_TEMPLATES
                      for word in re.findall(r"\w+|[^\w\s]", _SLOT.sub(" ", template))]
    return list(dict.fromkeys([*template_words, *NAMES, *PLACES, *OBJECTS]))


def _prompt_template(template: str) -> str:
    """The template without its final ``[A]`` (the answer)."""
    if not template.endswith(" [A]"):
        raise ValueError(f"an IOI template ends with the answer ' [A]': {template!r}")
    return template[: -len(" [A]")]


def _fill(template: str, io: str, s: str, place: str, obj: str) -> str:
    words = {"[A]": io, "[B]": s, "[PLACE]": place, "[OBJECT]": obj}
    return _SLOT.sub(lambda match: words[match.group()], _prompt_template(template))


def _fill_abc(template: str, names: list[str], place: str, obj: str) -> str:
    """The ABC corruption: each name slot, in order, gets the next of ``names``."""
    text = _fill(template, "[A]", "[B]", place, obj)
    fresh = iter(names)
    return _NAME_SLOT.sub(lambda match: next(fresh), text)


def _single_token_words(tokenizer: Any, words: tuple[str, ...]) -> dict[str, int]:
    """The words the tokenizer encodes as one known token after a space (GPT-2 style), with it."""
    kept = {}
    for word in words:
        ids = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
            kept[word] = ids[0]
    return kept


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)]


def _fillers(tokenizer: Any) -> tuple[dict[str, int], list[str], list[str]]:
    """The usable names (with their token), places and objects; a one-line error when too few."""
    names = _single_token_words(tokenizer, NAMES)
    places, objects = list(_single_token_words(tokenizer, PLACES)), list(_single_token_words(tokenizer, OBJECTS))
    if len(names) < NAMES_PER_PROMPT:
        raise MibenchError(f"the tokenizer encodes only {len(names)} of the IOI names as one token after a "
                           f"space; IOI prompts need {NAMES_PER_PROMPT} (IO, S and three for the corrupted "
                           f"prompt): use GPT-2's tokenizer or one that covers vocabulary()")
    if not places or not objects:
        raise MibenchError("the tokenizer encodes none of the IOI places or none of its objects as one token "
                           "after a space: use GPT-2's tokenizer or one that covers vocabulary()")
    return names, places, objects


def equal_length_templates(tokenizer: Any) -> list[str]:
    """The templates (BABA ones, then their ABBA mirrors) whose tokenized prompt has the length
    most templates share (on a tie, the longer length)."""
    names, places, objects = _fillers(tokenizer)
    io, s = list(names)[:2]
    templates = [*BABA_TEMPLATES, *ABBA_TEMPLATES]
    lengths = [len(_encode(tokenizer, _fill(t, io, s, places[0], objects[0]))) for t in templates]
    counts = Counter(lengths)
    common = max(counts, key=lambda length: (counts[length], length))
    return [t for t, length in zip(templates, lengths) if length == common]


def build_ioi_dataset(tokenizer: Any, n: int, seed: int, split: str = "test", sample: int = 0):
    """``n`` IOI prompts drawn from :func:`mibench.api.prompt_rng` ``(seed, split, sample)``, half
    ABBA and half BABA (alternating), all of one token length.

    Columns: ``prompt``, ``corrupted_prompt``, ``answer`` (" " + IO), ``wrong`` (" " + S),
    ``template``, ``order`` (``ABBA``/``BABA``), ``clean_ids``, ``corrupted_ids`` (BOS first),
    ``answer_id``, ``wrong_id``, and the token positions in ``clean_ids`` of ``IO``, ``S1``, ``S2``
    and ``END`` (the last token)."""
    import datasets

    if n < 1:
        raise MibenchError(f"the number of IOI prompts must be at least 1, got {n}")
    names, places, objects = _fillers(tokenizer)
    name_list = list(names)
    kept = set(equal_length_templates(tokenizer))
    # a template is used in both orders or not at all, so ABBA and BABA prompts share templates
    pairs = [pair for pair in zip(ABBA_TEMPLATES, BABA_TEMPLATES) if set(pair) <= kept]
    if not pairs:
        raise MibenchError("no IOI template has ABBA and BABA prompts of one token length under this "
                           "tokenizer: use GPT-2's tokenizer or one that covers vocabulary()")
    rng = prompt_rng(seed, split, sample)
    rows = []
    for i in range(n):
        order = ORDERS[i % 2]
        template = pairs[rng.integers(len(pairs))][i % 2]
        io, s, *others = (name_list[j] for j in rng.choice(len(name_list), NAMES_PER_PROMPT, replace=False))
        place, obj = places[rng.integers(len(places))], objects[rng.integers(len(objects))]
        rows.append(_row(tokenizer, template, order, io, s, others, place, obj, names))
    lengths = {len(row["clean_ids"]) for row in rows}
    if len(lengths) > 1:
        raise MibenchError(f"IOI prompts of one template tokenize to different lengths {sorted(lengths)}: "
                           f"the tokenizer merges a name, place or object with its neighbours; use GPT-2's")
    info = datasets.DatasetInfo(description=f"IOI prompts of Wang et al. 2022 (arXiv:2211.00593), seed "
                                f"{seed}, sample {sample}, split {split}")
    return datasets.Dataset.from_list(rows, info=info, split=split)


def _row(tokenizer: Any, template: str, order: str, io: str, s: str, others: list[str], place: str,
         obj: str, names: dict[str, int]) -> dict[str, Any]:
    prompt, corrupted = _fill(template, io, s, place, obj), _fill_abc(template, others, place, obj)
    clean_ids, corrupted_ids = _encode(tokenizer, prompt), _encode(tokenizer, corrupted)
    io_at = [i for i, t in enumerate(clean_ids) if t == names[io]]
    s_at = [i for i, t in enumerate(clean_ids) if t == names[s]]
    # one IO and two S tokens, or the tokenizer split a name in context and positions would lie
    if len(io_at) != 1 or len(s_at) != 2 or len(corrupted_ids) != len(clean_ids):
        raise MibenchError(f"the tokenizer does not keep the names of {prompt!r} as single tokens in "
                           f"context: use GPT-2's tokenizer or one that covers vocabulary()")
    return {"prompt": prompt, "corrupted_prompt": corrupted, "answer": " " + io, "wrong": " " + s,
            "template": template, "order": order, "clean_ids": clean_ids, "corrupted_ids": corrupted_ids,
            "answer_id": names[io], "wrong_id": names[s], "IO": io_at[0], "S1": s_at[0], "S2": s_at[1],
            "END": len(clean_ids) - 1}


def to_prompt_set(dataset) -> PromptSet:
    """The dataset of :func:`build_ioi_dataset` (or its ``load_from_disk`` copy) as a PromptSet:
    positions ``IO``, ``S1``, ``S2``, ``END``; variable ``order`` (0 ABBA, 1 BABA)."""
    import torch

    if dataset.split is None:
        raise MibenchError("the IOI dataset has no split (train or test); build it with build_ioi_dataset")
    clean, corrupted = list(dataset["clean_ids"]), list(dataset["corrupted_ids"])
    lengths = {len(ids) for ids in clean + corrupted}
    if len(lengths) != 1:
        raise MibenchError(f"a PromptSet needs clean and corrupted prompts of one token length; this dataset "
                           f"has lengths {sorted(lengths)}")
    column = lambda name: torch.tensor(list(dataset[name]), dtype=torch.long)  # noqa: E731
    return PromptSet(clean=torch.tensor(clean, dtype=torch.long), corrupted=torch.tensor(corrupted, dtype=torch.long),
                     answer=column("answer_id"), wrong=column("wrong_id"),
                     positions={label: column(label) for label in ("IO", "S1", "S2", "END")},
                     variables={"order": torch.tensor([ORDERS.index(o) for o in dataset["order"]])},
                     split=str(dataset.split))


class IOIPromptCase(LiteratureCase):
    """A literature case on the IOI prompts (``gpt2_ioi`` and ``gpt2_copy_suppression``): ABBA and
    BABA templates, ABC corruption (three fresh names) as Wang et al., metric logit(IO) − logit(S)
    at END. Nameless, so the registry does not list it."""

    def dataset(self, n: int, seed: int, split: str = "test", sample: int = 0):
        """The prompts as a Hugging Face ``datasets.Dataset`` (text, token ids, positions, template)."""
        return build_ioi_dataset(self.tokenizer(), n, seed, split, sample)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        return to_prompt_set(self.dataset(n, seed, split, sample))
