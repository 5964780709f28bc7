"""The IOI prompt generator of the gpt2_ioi case (Wang et al. 2022's templates as a Hugging Face
dataset), on a word-level tokenizer covering its vocabulary: no GPT-2 download needed."""
from __future__ import annotations

import re

import pytest
import torch
from datasets import load_from_disk
from gpt2_checkpoint import word_level_tokenizer

from ground_truth.gpt2_ioi import dataset as ioi
from mibench.api import MibenchError

N = 40


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(ioi.vocabulary())


@pytest.fixture(scope="module")
def rows(tokenizer):
    return ioi.build_ioi_dataset(tokenizer, N, seed=3)


def _name_slots(template: str) -> list[str]:
    return re.findall(r"\[(A|B)\]", template)


def test_templates_are_the_papers_fifteen_and_abba_mirrors_them():
    assert len(ioi.BABA_TEMPLATES) == len(ioi.ABBA_TEMPLATES) == 15
    assert ioi.BABA_TEMPLATES[0] == "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert ioi.ABBA_TEMPLATES[0] == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    for baba, abba in zip(ioi.BABA_TEMPLATES, ioi.ABBA_TEMPLATES):
        assert _name_slots(baba) == ["B", "A", "B", "A"]
        assert _name_slots(abba) == ["A", "B", "B", "A"]
        assert re.sub(r"\[(A|B)\]", "_", baba) == re.sub(r"\[(A|B)\]", "_", abba)  # only names moved
    assert len(ioi.NAMES) == len(set(ioi.NAMES)) == 99 and "Mary" in ioi.NAMES and "John" in ioi.NAMES
    assert len(ioi.PLACES) == len(ioi.OBJECTS) == 8


def test_the_word_level_tokenizer_splits_words_and_punctuation(tokenizer):
    assert len(tokenizer.encode(" Mary", add_special_tokens=False)) == 1
    assert len(tokenizer.encode("store.", add_special_tokens=False)) == 2


def test_equal_length_templates_keep_the_most_common_length_in_both_orders(tokenizer, rows):
    kept = ioi.equal_length_templates(tokenizer)
    # by hand: 15 tokens without BOS for templates 1, 5, 9, 10, 12, 14 and 15 of the paper's list
    assert kept == [ioi.BABA_TEMPLATES[i] for i in (0, 4, 8, 9, 11, 13, 14)] + \
        [ioi.ABBA_TEMPLATES[i] for i in (0, 4, 8, 9, 11, 13, 14)]
    assert set(rows["template"]) <= set(kept)
    assert {len(ids) for ids in [*rows["clean_ids"], *rows["corrupted_ids"]]} == {16}  # BOS + 15


def test_rows_hold_both_orders_and_positions_point_at_the_names(tokenizer, rows):
    assert rows.split == "test" and len(rows) == N
    assert rows["order"].count("ABBA") == rows["order"].count("BABA") == N // 2
    to_id = tokenizer.convert_tokens_to_ids("to")
    for row in rows:
        ids = row["clean_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert ids[row["IO"]] == row["answer_id"] != row["wrong_id"] == ids[row["S1"]] == ids[row["S2"]]
        assert ids.count(row["answer_id"]) == 1 and ids.count(row["wrong_id"]) == 2
        assert tokenizer.encode(row["answer"], add_special_tokens=False) == [row["answer_id"]]
        assert tokenizer.encode(row["wrong"], add_special_tokens=False) == [row["wrong_id"]]
        first = row["S1"] < row["IO"]  # BABA: the subject comes first
        assert first == (row["order"] == "BABA") and row["S2"] > max(row["IO"], row["S1"])
        assert row["template"] in (ioi.BABA_TEMPLATES if first else ioi.ABBA_TEMPLATES)
        assert row["END"] == len(ids) - 1 and ids[-1] == to_id and row["prompt"].endswith(" to")
        assert tokenizer.encode(row["prompt"], add_special_tokens=False) == ids[1:]
        assert row["prompt"].count(row["wrong"].strip()) == 2


def test_corruption_puts_three_fresh_names_in_the_name_slots_and_keeps_the_rest(tokenizer, rows):
    name_ids = {tokenizer.convert_tokens_to_ids(name) for name in ioi.NAMES}
    for row in rows:
        clean, corrupted = row["clean_ids"], row["corrupted_ids"]
        slots = [row["IO"], row["S1"], row["S2"]]
        fresh = [corrupted[i] for i in slots]
        assert len(set(fresh)) == 3 and set(fresh) <= name_ids
        assert not set(fresh) & {row["answer_id"], row["wrong_id"]}
        assert [t for i, t in enumerate(corrupted) if i not in slots] == \
            [t for i, t in enumerate(clean) if i not in slots]
        assert tokenizer.encode(row["corrupted_prompt"], add_special_tokens=False) == corrupted[1:]


def test_same_arguments_same_data_other_split_or_sample_other_data(tokenizer, rows):
    assert ioi.build_ioi_dataset(tokenizer, N, seed=3).to_dict() == rows.to_dict()
    train = ioi.build_ioi_dataset(tokenizer, N, seed=3, split="train")
    clean = list(rows["clean_ids"])
    assert train.split == "train" and list(train["clean_ids"]) != clean
    assert list(ioi.build_ioi_dataset(tokenizer, N, seed=3, sample=1)["clean_ids"]) != clean
    assert list(ioi.build_ioi_dataset(tokenizer, N, seed=4)["clean_ids"]) != clean


def test_prompt_set_and_round_trip_through_disk(tokenizer, tmp_path):
    train = ioi.build_ioi_dataset(tokenizer, 10, seed=0, split="train")
    train.save_to_disk(str(tmp_path / "ioi"))
    loaded = load_from_disk(str(tmp_path / "ioi"))
    a, b = ioi.to_prompt_set(train), ioi.to_prompt_set(loaded)
    assert a.split == b.split == "train" and a.labels == b.labels == ["IO", "S1", "S2", "END"]
    for x, y in [(a.clean, b.clean), (a.corrupted, b.corrupted), (a.answer, b.answer), (a.wrong, b.wrong),
                 *((a.positions[k], b.positions[k]) for k in a.positions),
                 (a.variables["order"], b.variables["order"])]:
        assert x.dtype == y.dtype == torch.long and torch.equal(x, y)
    assert torch.equal(a.clean, torch.tensor(list(train["clean_ids"])))
    assert a.variables["order"].tolist() == [ioi.ORDERS.index(o) for o in train["order"]] == [0, 1] * 5
    assert torch.equal(a.answer, a.clean[torch.arange(10), a.positions["IO"]])


def test_only_single_token_names_are_used_and_too_few_is_an_error():
    covered = ["Mary", "John", "Lisa", "Paul", "Sara", "Kyle"]
    words = [w for w in ioi.vocabulary() if w not in ioi.NAMES or w in covered]
    names_seen = set()
    for row in ioi.build_ioi_dataset(word_level_tokenizer(words), 30, seed=0):
        names_seen |= set(re.findall(r"[A-Z][a-z]+", row["prompt"] + " " + row["corrupted_prompt"]))
    assert names_seen & set(ioi.NAMES) == set(covered)
    with pytest.raises(MibenchError, match="only 4 of the IOI names"):
        ioi.build_ioi_dataset(word_level_tokenizer([w for w in words if w not in covered[:2]]), 4, seed=0)
