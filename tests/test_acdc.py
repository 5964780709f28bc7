"""ACDC (techniques/acdc.py) on a hand-built 2-layer model whose effective edge set is known exactly."""
from __future__ import annotations

import numpy as np
import torch

from mibench.api import CaseView, MetricSpec, PromptSet
from mibench.model.bridge import boot_native
from mibench.model.edges import EdgePatcher
from techniques.acdc import ACDC, kl_from

torch.set_num_threads(1)
V = 6  # tokens; the residual holds five V-dimensional subspaces
TOKEN, COPY, SPARE, OUT, JUNK = (slice(i * V, (i + 1) * V) for i in range(5))
#: the only edges through which a change of the first token reaches the logits
CIRCUIT = {"input->a0.h0<v>", "a0.h0->a1.h0<v>", "a1.h0->logits"}


def _model():
    """Every head attends uniformly (zero QK). a0.h0 copies the token into COPY, a1.h0 copies COPY
    into OUT, which alone the unembedding reads. The distractors a0.h1 (token → SPARE) and a1.h1
    (SPARE → JUNK) write where nothing downstream reads. So under a corruption of the first token
    exactly the CIRCUIT edges carry a change; every q/k edge and every other edge carries none."""
    d, eye = 5 * V, np.eye(V)
    w = {"W_E": np.zeros((V, d)), "W_pos": np.zeros((2, d)), "W_U": np.zeros((d, V)),
         **{k: np.zeros((2, 2, d, V)) for k in ("W_Q", "W_K", "W_V")}, "W_O": np.zeros((2, 2, V, d))}
    w["W_E"][:, TOKEN] = eye
    for layer, head, read, write in [(0, 0, TOKEN, COPY), (1, 0, COPY, OUT), (0, 1, TOKEN, SPARE), (1, 1, SPARE, JUNK)]:
        w["W_V"][layer, head][read] = eye
        w["W_O"][layer, head][:, write] = eye
    w["W_U"][OUT] = 4 * eye
    return boot_native(w, n_heads=2, n_ctx=2, d_mlp=0, layer_norm=False)


def _prompts():
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, V, 16), rng.integers(0, V, 16)
    other = (first + rng.integers(1, V, 16)) % V
    t = lambda *cols: torch.tensor(np.stack(cols, 1))  # noqa: E731
    return PromptSet(t(first, second), t(other, second), torch.tensor(first), torch.tensor(other))


def test_acdc_at_a_small_threshold_keeps_exactly_the_circuit_edges():
    model, prompts = _model(), _prompts()
    patcher = EdgePatcher(model, prompts.clean, prompts.corrupted, [1])
    full = torch.log_softmax(patcher.clean_logits, dim=-1)
    with torch.no_grad():
        keep, effect = ACDC().prune(patcher, full, tau=1e-4)
    kept = {e for e, k in zip(patcher.graph.edges, keep) if k}
    assert kept == CIRCUIT
    assert all(effect[patcher.graph.edges.index(e)] > 1e-2 for e in CIRCUIT)
    # a threshold above every edge's effect removes them all
    with torch.no_grad():
        everything = float(kl_from(full, patcher.run(patcher.graph.keep_mask(torch.zeros(1, len(keep)))))[0])
        keep, _ = ACDC().prune(patcher, full, tau=10 * everything)
    assert not keep.any()


def test_the_scores_rank_the_circuit_edges_first():
    model, prompts = _model(), _prompts()
    view = CaseView(model, prompts, prompts, MetricSpec(), "edge", 0, "hand_built")
    scores = ACDC().attribute(view)
    assert set(scores.nlargest(len(CIRCUIT)).index) == CIRCUIT
    assert scores[list(CIRCUIT)].min() > scores.drop(list(CIRCUIT)).max()
