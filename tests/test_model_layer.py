"""One owner for model access: TransformerLens hook names, weight tensors, bridge internals and
norm handling appear in ``mibench/model/`` only; cases, techniques and the rest of the engine call it.
(Docstrings may name hooks; code may not.) The planted-model toolkit ``mibench/models/`` builds its
own numpy weights and hands them to ``mibench.model.bridge``, so its ``W_*`` arrays are its own."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: attributes that reach into TransformerLens's model or bridge
BRIDGE_ATTRIBUTES = {"original_component", "original_model", "hook_dict", "_captured_pre_ln_residual",
                     "run_with_hooks", "ln_final", "b_U", "boot_native"}
WEIGHT_ATTRIBUTES = {"W_Q", "W_K", "W_V", "W_O", "W_U", "W_E", "W_pos", "W_in", "W_out"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _leaks(path: Path, weights_allowed: bool) -> list[str]:
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if "hook_" in node.value or node.value.startswith("blocks."):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} hook name {node.value!r}")
        if isinstance(node, ast.JoinedStr):  # f"blocks.{l}.attn.hook_z"
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if "hook_" in text or text.startswith("blocks."):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} hook name f-string")
        if isinstance(node, ast.Attribute):
            if node.attr in BRIDGE_ATTRIBUTES or (node.attr in WEIGHT_ATTRIBUTES and not weights_allowed):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    return out


def _files():
    for folder in ("mibench", "techniques", "ground_truth"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "model" not in path.relative_to(ROOT).parts[:2] or path.parts[-2] == "models":
                yield path


def test_only_the_model_layer_knows_transformer_lens():
    leaks = []
    for path in _files():
        if path.relative_to(ROOT).parts[:2] == ("mibench", "model"):
            continue
        leaks += _leaks(path, weights_allowed=path.relative_to(ROOT).parts[:2] == ("mibench", "models"))
    assert not leaks, "\n".join(leaks)


def test_the_scan_finds_a_leak(tmp_path, monkeypatch):
    """The scan is not vacuous: a hook name, a bridge internal and a raw weight are each caught."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = tmp_path / "leaky.py"
    bad.write_text('"""Docstrings may say blocks.0.attn.hook_z."""\n'
                   'def f(model, l):\n'
                   '    h = f"blocks.{l}.attn.hook_pattern"\n'
                   '    return model.W_O[0], model.original_model, "hook_embed", h\n')
    found = "\n".join(_leaks(bad, weights_allowed=False))
    for leak in ("hook name f-string", ".original_model", "'hook_embed'", ".W_O"):
        assert leak in found, found
    assert ":1 " not in found  # the docstring is allowed


@pytest.mark.parametrize("case_name", ["induction", "ioi", "copy_suppression", "planted_trigger",
                                       "trap_and_gate", "trap_backup", "trap_bias_component",
                                       "trap_decodable_unused", "trap_lens_offset", "trap_ln_scale",
                                       "trap_suppression"])
def test_a_case_s_granularities_come_from_its_truth(case_name):
    from mibench.registry import load_case

    case = load_case(case_name)
    for seed in range(2):
        assert case.granularities == tuple(case.build(seed).truth.granularities())


def test_verify_fails_when_circuit_yaml_disagrees_with_the_instance():
    """Moving a role into the layer of a role that circuit.yaml puts before it fails the
    certificate's label check (and only that check)."""
    import dataclasses

    from conftest import certify_instance, prepared

    prep = prepared("induction", 0)
    truth = prep.instance.truth
    (induction_head,) = [n for n, r in truth.nodes.items() if r == "induction"]
    wrong_layer = "a0.h3" if "a0.h3" not in truth.nodes else "a0.h2"
    nodes = {(wrong_layer if n == induction_head else n): r for n, r in truth.nodes.items()}
    moved = dataclasses.replace(prep.instance, truth=dataclasses.replace(truth, nodes=nodes))
    cert = certify_instance(prep.case, moved)
    label_check = next(c for c in cert.checks if c.name == "labels match circuit.yaml")
    assert not label_check.passed and "out of circuit.yaml's layer order" in label_check.detail
    assert prep.certificate.passed
