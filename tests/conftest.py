"""Shared fixtures: cases are built once per session (building is deterministic per seed)."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    """Keep the registry's metadata cache out of the user's cache folder (set before collection,
    which already lists techniques; subprocesses of the CLI tests inherit it). Without pytest's
    cache plugin (``-p no:cacheprovider``) a temporary folder serves."""
    cache = getattr(config, "cache", None)
    folder = cache.mkdir("mibench-registry-cache") if cache is not None else \
        tempfile.mkdtemp(prefix="mibench-registry-cache-")
    os.environ["MIBENCH_CACHE_DIR"] = str(folder)


@lru_cache(maxsize=None)
def prepared(case_name: str, seed: int, size: str = "small"):
    from mibench.registry import load_case
    from mibench.runner import prepare

    return prepare(load_case(case_name), seed, size=size)


@pytest.fixture
def fixture_technique():
    return lambda name: str(FIXTURES / "techniques" / f"{name}.py")


def certify_instance(case, instance):
    """The certificate of an (edited) instance, exactly as the runner computes it."""
    from mibench.runner import prepare

    return prepare(case, instance.seed, instance).certificate


def failed_checks(cert) -> set[str]:
    """Names of the failed checks without their component suffix (``necessity a1.h2`` -> ``necessity``)."""
    import re

    return {" ".join(w for w in c.name.split() if not re.match(r"^[am]\d", w)) for c in cert.failed()}


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A random GPT-2-architecture checkpoint folder (see tests/gpt2_checkpoint.py)."""
    from gpt2_checkpoint import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "checkpoint")
