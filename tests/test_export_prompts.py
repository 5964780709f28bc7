"""``mibench export-prompts``: a case's prompts saved as a Hugging Face DatasetDict (test, train)."""
from __future__ import annotations

import argparse

import pytest
import torch
from datasets import load_from_disk
from gpt2_checkpoint import word_level_tokenizer

from mibench.api import MibenchError, PromptSet
from mibench.cli import export_prompts as command
from mibench.prompt_export import prompt_set_to_dataset
from mibench.registry import load_case
from mibench.runner import N_TRAIN_PROMPTS


def run(*argv: str) -> int:
    """The subcommand as ``mibench export-prompts ARGV`` runs it (argument parsing included)."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.main(parser.parse_args(list(argv)))


def assert_rows_equal(dataset, prompts: PromptSet) -> None:
    assert dataset.split == prompts.split and len(dataset) == len(prompts)
    assert torch.equal(torch.tensor(list(dataset["clean_ids"])), prompts.clean)
    assert torch.equal(torch.tensor(list(dataset["corrupted_ids"])), prompts.corrupted)
    assert torch.equal(torch.tensor(list(dataset["answer_id"])), prompts.answer)
    assert torch.equal(torch.tensor(list(dataset["wrong_id"])), prompts.wrong)
    for kind, prefix in (("positions", "pos_"), ("variables", "var_")):
        for name, value in getattr(prompts, kind).items():
            assert torch.equal(torch.tensor(list(dataset[prefix + name])), value), name


def test_a_planted_case_exports_the_prompts_a_run_reads(tmp_path, capsys):
    folder = tmp_path / "ioi-prompts"
    assert run("--case", "ioi", "--seed", "2", "--size", "small", "--n", "8", str(folder)) == 0
    saved = load_from_disk(str(folder))
    assert set(saved) == {"test", "train"}
    case = load_case("ioi")
    assert_rows_equal(saved["test"], case.prompts(8, 2, "test"))
    assert_rows_equal(saved["train"], case.prompts(N_TRAIN_PROMPTS, 2, "train"))
    assert saved["test"].column_names == ["clean_ids", "corrupted_ids", "answer_id", "wrong_id", "pos_BOS", "pos_IO",
                                          "pos_S1", "pos_S1+1", "pos_S2", "pos_END", "var_IO", "var_S", "var_baba"]
    assert "seed 2, size small, split test" in saved["test"].info.description
    said = capsys.readouterr().out
    assert f"datasets.load_from_disk({str(folder)!r})" in said and "8 test and 64 train" in said


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MibenchError, match="not an empty folder"):
        run("--case", "induction", str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_size_the_case_does_not_build_and_several_cases_are_refused(tmp_path):
    with pytest.raises(MibenchError, match="no 'large' size"):
        run("--case", "trap_ln_scale", "--size", "large", str(tmp_path / "a"))
    with pytest.raises(MibenchError, match="export-prompts takes one"):
        run("--case", "trap_*", str(tmp_path / "b"))
    assert list(tmp_path.iterdir()) == []


def test_text_columns_are_decoded_when_a_tokenizer_is_given():
    tokenizer = word_level_tokenizer(["Then", "Mary", "John", "left"])
    ids = lambda *words: [tokenizer.convert_tokens_to_ids(w) for w in words]  # noqa: E731
    prompts = PromptSet(clean=torch.tensor([ids("Then", "Mary", "left")]),
                        corrupted=torch.tensor([ids("Then", "John", "left")]), answer=torch.tensor(ids("Mary")), wrong=torch.tensor(ids("John")),
                        positions={"END": torch.tensor([2])}, split="train")
    row = prompt_set_to_dataset(prompts, tokenizer)[0]
    assert (row["prompt"], row["corrupted_prompt"], row["answer"], row["wrong"]) == \
        ("Then Mary left", "Then John left", "Mary", "John")
    assert row["pos_END"] == 2 and row["clean_ids"] == ids("Then", "Mary", "left")


def test_gpt2_ioi_exports_its_own_dataset_with_the_checkpoints_tokenizer(tmp_path, tiny_gpt2, monkeypatch):
    from ground_truth.gpt2_ioi.dataset import to_prompt_set
    from mibench.model.pretrained import PATH_VARIABLE, load_tokenizer

    monkeypatch.setenv(PATH_VARIABLE, str(tiny_gpt2))  # so that --model-path's setting is undone after
    try:
        assert run("--case", "gpt2_ioi", "--seed", "1", "--n", "6", "--model-path", str(tiny_gpt2),
                   str(tmp_path / "out")) == 0
        saved = load_from_disk(str(tmp_path / "out"))
        case = load_case("gpt2_ioi")
        assert {"prompt", "template", "order", "IO", "S1", "S2", "END"} <= set(saved["test"].column_names)
        assert saved["test"]["order"] == ["ABBA", "BABA"] * 3 and len(saved["train"]) == N_TRAIN_PROMPTS
        for split, n in (("test", 6), ("train", N_TRAIN_PROMPTS)):
            expected, got = case.prompts(n, 1, split), to_prompt_set(saved[split])
            assert got.split == split and torch.equal(got.clean, expected.clean)
            assert all(torch.equal(got.positions[k], expected.positions[k]) for k in expected.positions)
    finally:
        load_tokenizer.cache_clear()
