"""A model as safetensors (weights, never pickle) and back: how a worker gets the model without the
code of the case that built it. :func:`save_model` / :func:`load_model` take the unit's folder.

A suite-built (native) model is one file, ``model.safetensors``, holding every parameter and
buffer of the bridge's native model under its module path, and in its header what
:func:`mibench.model.bridge.boot_native` needs to build the skeleton again. A model loaded from
Hugging Face (the literature tier) is saved as a Hugging Face checkpoint folder, ``hf/``
(``config.json``, ``model.safetensors``, the tokenizer's files), written from the checkpoint it was
booted from, and booted from it again exactly as :mod:`mibench.model.pretrained` boots the
user's weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mibench.api import MibenchError
from mibench.model import bridge

METADATA_KEY = "mibench_model"


def _skeleton_config(model) -> dict[str, Any]:
    cfg = model.cfg
    return {"kind": "native", "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
            "d_head": cfg.d_head, "n_ctx": cfg.n_ctx, "d_vocab": cfg.d_vocab,
            "d_mlp": 0 if cfg.attn_only else int(cfg.d_mlp), "layer_norm": cfg.normalization_type == "LN"}


def _tensors(model) -> dict[str, torch.Tensor]:
    """Each parameter and buffer once (the bridge reaches one tensor by several paths)."""
    native = model.original_model
    return {**dict(native.named_parameters()), **dict(native.named_buffers())}


NATIVE_FILE, HF_FOLDER = "model.safetensors", "hf"


def is_native(model) -> bool:
    """Whether ``model`` was built by :func:`mibench.model.bridge.boot_native` (else: Hugging Face)."""
    return type(model.original_model).__module__.startswith("transformer_lens")


def save_model(model, folder: str | Path) -> None:
    """Write ``model`` into ``folder`` (see the module docstring for the layout)."""
    folder = Path(folder)
    if not is_native(model):
        _save_hugging_face(model, folder / HF_FOLDER)
        return
    _save_native(model, folder / NATIVE_FILE)


def load_model(folder: str | Path):
    """The model saved in ``folder``; a one-line MibenchError names the file and the problem."""
    folder = Path(folder)
    if (folder / HF_FOLDER).is_dir():
        from mibench.model.pretrained import boot_checkpoint

        return boot_checkpoint(folder / HF_FOLDER)
    return _load_native(folder / NATIVE_FILE)


def _save_hugging_face(model, folder: Path) -> None:
    """The checkpoint ``model`` was booted from, written again as safetensors. Not the bridge's own
    modules: booting rewrites GPT-2's Conv1D layers in place, whose weights then no longer load
    into a fresh model."""
    from transformers import AutoModelForCausalLM

    source = getattr(model, "mibench_checkpoint", None)
    if source is None:
        raise MibenchError("a Hugging Face model reaches a worker as the checkpoint it was loaded from; "
                           "load it with mibench.model.pretrained.boot_checkpoint")
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(folder, safe_serialization=True)
    model.tokenizer.save_pretrained(folder)


def _save_native(model, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous().clone() for name, t in _tensors(model).items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(_skeleton_config(model))})


def _load_native(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            config = json.loads((file.metadata() or {})[METADATA_KEY])
            saved = {name: file.get_tensor(name) for name in file.keys()}
    except Exception as exc:  # safetensors raises its own error types for a corrupt file
        raise MibenchError(f"model file {str(path)!r} is not a mibench model ({type(exc).__name__}: "
                           f"{exc}); write it again with save_model") from None
    if config.get("kind") != "native":
        raise MibenchError(f"model file {str(path)!r} holds a {config.get('kind')!r} model; only "
                           f"native (suite-built) models are stored this way")
    layers, heads, d_model, d_head = (config[k] for k in ("n_layers", "n_heads", "d_model", "d_head"))
    d_mlp, vocab = config["d_mlp"], config["d_vocab"]
    zeros = {"W_E": (vocab, d_model), "W_pos": (config["n_ctx"], d_model), "W_U": (d_model, vocab),
             "W_Q": (layers, heads, d_model, d_head), "W_K": (layers, heads, d_model, d_head),
             "W_V": (layers, heads, d_model, d_head), "W_O": (layers, heads, d_head, d_model),
             "W_in": (layers, d_model, d_mlp), "b_in": (layers, d_mlp), "W_out": (layers, d_mlp, d_model)}
    model = bridge.boot_native({k: np.zeros(shape, np.float32) for k, shape in zeros.items()},
                               n_heads=heads, n_ctx=config["n_ctx"], d_mlp=d_mlp,
                               layer_norm=config["layer_norm"])
    targets = _tensors(model)
    if set(targets) != set(saved):
        missing, extra = sorted(set(targets) - set(saved)), sorted(set(saved) - set(targets))
        raise MibenchError(f"model file {str(path)!r} does not fit its model: missing {missing[:3]}, "
                           f"unexpected {extra[:3]}; write it again with save_model")
    with torch.no_grad():
        for name, target in targets.items():
            if target.shape != saved[name].shape:
                raise MibenchError(f"model file {str(path)!r}: {name} has shape "
                                   f"{tuple(saved[name].shape)}, the model {tuple(target.shape)}")
            target.copy_(saved[name])
    model.eval()
    return model
