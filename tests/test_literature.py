"""The literature tier end to end on a random GPT-2-architecture checkpoint the tests make (no
weights can be downloaded here): loading, the worker's copy of the model, the measured
certificate, and the one-line error without weights. The figures are meaningless; the path is not."""
from __future__ import annotations

import json

import pytest
import torch

from mibench.api import MibenchError
from mibench.cli.main import main
from mibench.registry import load_case

PAPER_HEADS = {  # Wang et al. 2022, as the issue and the case README list them
    "name_mover": {"a9.h9", "a9.h6", "a10.h0"},
    "negative_name_mover": {"a10.h7", "a11.h10"},
    "backup_name_mover": {"a10.h10", "a10.h6", "a10.h2", "a10.h1", "a11.h2", "a9.h7", "a9.h0", "a11.h9"},
    "s_inhibition": {"a7.h3", "a7.h9", "a8.h6", "a8.h10"},
    "induction": {"a5.h5", "a5.h8", "a5.h9", "a6.h9"},
    "duplicate_token": {"a0.h1", "a0.h10", "a3.h0"},
    "previous_token": {"a2.h2", "a4.h11"},
}


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No --model-path, no $MIBENCH_GPT2_PATH, an empty Hugging Face cache and no hub."""
    monkeypatch.delenv("MIBENCH_GPT2_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    from mibench.model import pretrained

    pretrained.load_gpt2.cache_clear()
    pretrained.load_tokenizer.cache_clear()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def weights(monkeypatch, tiny_gpt2):
    monkeypatch.delenv("MIBENCH_GPT2_PATH", raising=False)  # main() sets it from --model-path
    yield tiny_gpt2
    from mibench.model import pretrained

    pretrained.load_gpt2.cache_clear()
    pretrained.load_tokenizer.cache_clear()


def test_the_ioi_labels_are_the_papers_26_heads_and_need_no_weights(no_weights):
    truth = load_case("gpt2_ioi").truth(0)
    by_role: dict[str, set[str]] = {}
    for node, role in truth.nodes.items():
        by_role.setdefault(role, set()).add(node)
    assert by_role == PAPER_HEADS and len(truth.nodes) == 26
    assert truth.direct == {**dict.fromkeys(PAPER_HEADS["name_mover"], 1),
                            **dict.fromkeys(PAPER_HEADS["negative_name_mover"], -1)}
    assert "a7.h3->a9.h9<q>" in truth.edges and "a2.h2->a5.h5<k>" in truth.edges
    assert "a0.h1->a7.h9<v>" in truth.edges and "a9.h9->logits" in truth.edges


def test_without_weights_a_literature_run_is_one_line_and_exit_2(no_weights, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", "--technique", "dla", "--case", "gpt2_ioi", "--seeds", "0",
                 "--results", str(results), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--model-path" in err and "MIBENCH_GPT2_PATH" in err
    assert not results.exists()  # nothing half-written
    assert main(["run", "--technique", "dla", "--case", "gpt2_ioi", "--model-path", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_all_cases_means_the_ones_the_suite_builds(no_weights):
    from mibench.cli.common import case_names

    assert not [c for c in case_names("all") if c.startswith("gpt2_")]
    assert case_names("gpt2_*") == ["gpt2_copy_suppression", "gpt2_induction", "gpt2_ioi"]


def test_a_hugging_face_model_reaches_the_worker_as_safetensors_unchanged(weights, tmp_path):
    from mibench.model.checkpoint import load_model, save_model
    from mibench.model.pretrained import boot_checkpoint

    model = boot_checkpoint(weights)
    save_model(model, tmp_path)
    assert sorted(p.suffix for p in (tmp_path / "hf").glob("*.safetensors")) == [".safetensors"]
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pkl"))
    tokens = torch.tensor([[0, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(tokens), model(tokens))


def test_run_and_verify_gpt2_ioi_end_to_end(weights, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", "--technique", "activation_patching,eap_ig,dla", "--case", "gpt2_ioi",
                 "--model-path", str(weights), "--seeds", "0", "--results", str(results), "--no-progress",
                 "--jobs", "1"])
    assert code == 0, capsys.readouterr()
    records = {p.parts[-4]: json.loads(p.read_text()) for p in results.rglob("seed0.json")}
    assert set(records) == {"activation_patching", "eap_ig", "dla"}
    for technique, record in records.items():
        assert record["status"] == "ok" and record["case_tier"] == "literature", (technique, record.get("error"))
        assert record["metrics"]["auroc"] is not None
    assert len(records["eap_ig"]["scores"]) == 32491  # every edge of a 12 x 12 GPT-2, as MIB counts them
    certificate = records["dla"]["certificate"]
    assert certificate["passed"] and not any(c["gates"] for c in certificate["checks"])
    assert sum(c["name"].startswith("effect ") for c in certificate["checks"]) == 26
    capsys.readouterr()
    assert main(["verify", "--case", "gpt2_ioi", "--model-path", str(weights), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "circuit faithfulness" in out and "complement" in out and "fingerprint audit: not run" in out
