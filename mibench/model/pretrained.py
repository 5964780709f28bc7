"""The literature tier's model: GPT-2 small as its authors released it, loaded through
TransformerLens's bridge from a Hugging Face checkpoint the user brings (weights are never
downloaded by the suite; where the machine is online, ``transformers`` may fetch them as it
always does).

Where the weights come from, first match wins: ``--model-path DIR`` (which sets
``$MIBENCH_GPT2_PATH`` for the run and its workers), ``$MIBENCH_GPT2_PATH``, else
``openai-community/gpt2`` in the Hugging Face cache (``$HF_HOME``, as ``transformers`` finds it),
else, when the hub answers, that checkpoint fetched into the cache. The tokenizer is always the
checkpoint's own.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from mibench.api import MibenchError

PATH_VARIABLE = "MIBENCH_GPT2_PATH"
HUB_NAME = "openai-community/gpt2"
_HOW = (f"pass --model-path DIR (a Hugging Face GPT-2 checkpoint folder: config.json, the weights and "
        f"the tokenizer files) or set ${PATH_VARIABLE}")


def use_model_path(path: str | Path) -> None:
    """Point this process (and the workers it starts) at the checkpoint folder ``path``."""
    folder = Path(path).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise MibenchError(f"--model-path {str(path)!r} is not a Hugging Face checkpoint folder "
                           f"(no config.json there); {_HOW}")
    os.environ[PATH_VARIABLE] = str(folder)
    load_gpt2.cache_clear()
    load_tokenizer.cache_clear()


def source() -> str:
    """The checkpoint folder: ``$MIBENCH_GPT2_PATH``, else the Hugging Face cache's snapshot of
    ``openai-community/gpt2``, else (online only) that snapshot fetched into the cache."""
    path = os.environ.get(PATH_VARIABLE)
    if path:
        if not (Path(path) / "config.json").is_file():
            raise MibenchError(f"${PATH_VARIABLE}={path!r} is not a Hugging Face checkpoint folder "
                               f"(no config.json there); {_HOW}")
        return path
    return _hub_snapshot()


#: the files of a checkpoint the suite reads (not the hub repository's other formats)
_CHECKPOINT_FILES = ["config.json", "*.safetensors", "tokenizer*", "vocab.json", "merges.txt",
                     "special_tokens_map.json", "generation_config.json"]


def _hub_snapshot() -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry warnings would bury the one-line error
    try:
        return snapshot_download(HUB_NAME, allow_patterns=_CHECKPOINT_FILES, local_files_only=True)
    except Exception:  # not in the cache
        pass
    if os.environ.get("HF_HUB_OFFLINE") or not _hub_reachable():
        raise MibenchError(f"no GPT-2 weights: {HUB_NAME} is not in the Hugging Face cache and the hub "
                           f"cannot be reached; {_HOW}")
    try:
        return snapshot_download(HUB_NAME, allow_patterns=_CHECKPOINT_FILES)
    except Exception as exc:
        raise MibenchError(f"could not fetch {HUB_NAME} from the hub ({str(exc).splitlines()[0]}); {_HOW}") from None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub answers at all (no network: fail now rather than after the client's retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _unreachable(exc: Exception) -> MibenchError:
    said = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return MibenchError(f"cannot load the GPT-2 checkpoint in {source()!r} ({said}); {_HOW}")


@functools.lru_cache(maxsize=1)
def load_tokenizer() -> Any:
    """The checkpoint's tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source())
    except MibenchError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors, …
        raise _unreachable(exc) from None


@functools.lru_cache(maxsize=1)
def load_gpt2() -> Any:
    """GPT-2 as a ``TransformerBridge`` (raw Hugging Face weights, eager attention), in eval mode."""
    tokenizer = load_tokenizer()
    try:
        return boot_checkpoint(source(), tokenizer)
    except Exception as exc:
        raise _unreachable(exc) from None


def boot_checkpoint(where: str | Path, tokenizer: Any = None) -> Any:
    """The bridge of the Hugging Face checkpoint ``where`` (a folder or a hub name), on the CPU,
    in eval mode, with the checkpoint's tokenizer."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load would interleave with the runner's own
    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(where))
    model = TransformerBridge.boot_transformers(str(where), device="cpu", tokenizer=tokenizer)
    model.eval()
    model.mibench_checkpoint = str(where)  # what a worker's copy is written from (checkpoint.py)
    return model
