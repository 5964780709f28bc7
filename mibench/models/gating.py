"""Attention writers built from several bilinear terms: signed scores, constant "sink" scores,
self-exclusion and prediction gates.

``PlantedModel.set_qk`` writes one term ``strength * (x_q · query_i)(x_k · key_i)``; a gated head
needs a sum of several, some negative (a query that *avoids* keys). :func:`set_qk_terms` stacks
them in one head's columns; the helpers below build the common terms from a layout's subspaces.
Nothing here knows about a particular circuit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mibench.models.layout import ResidualLayout
from mibench.models.planted import PlantedModel


@dataclass(frozen=True)
class QKTerm:
    """Score ``strength * sum_i (x_q · query_i)(x_k · key_i)``; ``strength`` may be negative."""

    query: np.ndarray  # [r, d_model]
    key: np.ndarray  # [r, d_model]
    strength: float


def set_qk_terms(model: PlantedModel, layer: int, head: int, terms: list[QKTerm]) -> int:
    """Write the sum of ``terms`` as the head's attention score; returns the rank used.

    A negative strength is written as a negated query with a positive strength (the square-root
    split of ``set_qk`` needs a non-negative strength). Raises if the total rank exceeds d_head."""
    offset = 0
    for term in terms:
        query = np.atleast_2d(term.query)
        key = np.atleast_2d(term.key)
        if query.shape != key.shape:
            raise ValueError(f"a QK term needs query and key of the same shape, got "
                             f"{query.shape} and {key.shape}")
        sign = 1.0 if term.strength >= 0 else -1.0
        model.set_qk(layer, head, sign * query, key, abs(term.strength), offset=offset)
        offset += query.shape[0]
    return offset


def rows(layout: ResidualLayout, block: str, indices: list[int] | None = None) -> np.ndarray:
    """Directions ``indices`` of ``block`` (all of them by default) as rows ``[r, d_model]``."""
    basis = layout.basis(block)
    return basis if indices is None else basis[list(indices)]


def constant_term(layout: ResidualLayout, query_flag: str, key_flag: str, strength: float) -> QKTerm:
    """A constant score on keys carrying ``key_flag`` from queries carrying ``query_flag`` (both
    one-dimensional blocks), e.g. an attention sink on BOS or a bonus on every name."""
    return QKTerm(rows(layout, query_flag), rows(layout, key_flag), strength)


def match_term(layout: ResidualLayout, query_block: str, key_block: str, strength: float,
               query_indices: list[int] | None = None, key_indices: list[int] | None = None) -> QKTerm:
    """Score ``strength`` where the i-th direction of ``query_block`` meets the i-th of
    ``key_block`` (same token, same position, predicted token = key token, …)."""
    q = rows(layout, query_block, query_indices)
    k = rows(layout, key_block, key_indices)
    return QKTerm(q, k, strength)


def self_exclusion_term(layout: ResidualLayout, pos_block: str, n_ctx: int, strength: float) -> QKTerm:
    """Score ``-strength`` on the query's own position (one-hot positions in ``pos_block``): lets a
    head that matches equal tokens find the *earlier* occurrence rather than itself."""
    p = rows(layout, pos_block)[:n_ctx]
    return QKTerm(p, p, -abs(strength))


def prediction_gate_term(layout: ResidualLayout, predicted_block: str, token_block: str,
                         strength: float, indices: list[int],
                         predicted_indices: list[int] | None = None) -> QKTerm:
    """Score ``-strength * (amount by which the residual already predicts token t)`` on keys whose
    token is ``t``: the query reads the subspace the unembedding reads (``predicted_block``), the
    key reads token identity. A head with this term and a sink stays silent while something
    upstream has written the answer, and copies it when that writer is ablated."""
    q = rows(layout, predicted_block, predicted_indices if predicted_indices is not None else indices)
    k = rows(layout, token_block, indices)
    return QKTerm(q, k, -abs(strength))


def embed_flag(model: PlantedModel, block: str, tokens: list[int], scale: float = 1.0) -> None:
    """Every token in ``tokens`` writes the (single) direction of the one-dimensional ``block``: a
    shared feature such as "is a name" or "is not BOS" (``embed_tokens`` gives each token its own
    direction instead)."""
    if model.layout.size(block) != 1:
        raise ValueError(f"embed_flag needs a one-dimensional block, {block!r} has "
                         f"{model.layout.size(block)} dimensions")
    direction = model.layout.direction(block, 0)
    for tok in tokens:
        model.W_E[tok] += scale * direction
