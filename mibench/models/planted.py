"""A planted transformer: weights written directly, then loaded into a TransformerLens bridge.

Writers speak in the circuit's terms (a head's query reads these directions, its key those, its
value copies this subspace into that one) so a case file describes its circuit and never touches
raw weight layout. All arithmetic is float64 numpy until ``to_bridge``.
"""
from __future__ import annotations

import numpy as np

from mibench.models.layout import ResidualLayout


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.where(norms == 0, 1.0, norms)


def random_orthogonal(d: int, rng: np.random.Generator, keep_ones: bool = False) -> np.ndarray:
    """A Haar-random orthogonal matrix; with ``keep_ones`` it also maps the all-ones direction to
    itself, so it commutes with LayerNorm's mean subtraction and the model's function is unchanged."""
    if not keep_ones:
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        return q * np.sign(np.diag(r))
    ones = np.ones((d, 1)) / np.sqrt(d)
    basis, _ = np.linalg.qr(np.hstack([ones, rng.standard_normal((d, d - 1))]))
    basis[:, 0] = ones[:, 0]  # fix the sign of the first column
    inner = random_orthogonal(d - 1, rng)
    block = np.eye(d)
    block[1:, 1:] = inner
    return basis @ block @ basis.T


class PlantedModel:
    def __init__(self, layout: ResidualLayout, *, n_layers: int, n_heads: int, d_head: int,
                 d_vocab: int, n_ctx: int, d_mlp: int = 0, layer_norm: bool = False) -> None:
        self.layout = layout
        self.n_layers, self.n_heads, self.d_head = n_layers, n_heads, d_head
        self.d_vocab, self.n_ctx, self.d_mlp = d_vocab, n_ctx, d_mlp
        self.layer_norm = layer_norm
        d = layout.d_model
        self.W_E = np.zeros((d_vocab, d))
        self.W_pos = np.zeros((n_ctx, d))
        self.W_Q = np.zeros((n_layers, n_heads, d, d_head))
        self.W_K = np.zeros_like(self.W_Q)
        self.W_V = np.zeros_like(self.W_Q)
        self.W_O = np.zeros((n_layers, n_heads, d_head, d))
        self.W_in = np.zeros((n_layers, d, max(d_mlp, 1)))
        self.b_in = np.zeros((n_layers, max(d_mlp, 1)))
        self.W_out = np.zeros((n_layers, max(d_mlp, 1), d))
        self.W_U = np.zeros((d, d_vocab))
        self.rotation: np.ndarray | None = None

    # --- embeddings and unembedding ---------------------------------------------------------

    def embed_tokens(self, block: str, tokens: list[int] | None = None, scale: float = 1.0) -> None:
        """Token ``t`` (the i-th of ``tokens``) writes the i-th direction of ``block``."""
        tokens = list(range(self.d_vocab)) if tokens is None else tokens
        basis = self.layout.basis(block)
        for i, tok in enumerate(tokens):
            self.W_E[tok] += scale * basis[i]

    def embed_positions(self, block: str, scale: float = 1.0) -> None:
        """Position ``p`` writes the p-th direction of ``block`` (one-hot positions)."""
        self.W_pos[:, :] += scale * self.layout.basis(block)[: self.n_ctx]

    def unembed(self, block: str, tokens: list[int] | None = None, scale: float = 1.0,
                mixing: np.ndarray | None = None) -> None:
        """The logit of token ``t`` (the i-th of ``tokens``) reads the i-th direction of ``block``;
        with ``mixing`` (``[block size, len(tokens)]``) it reads ``sum_j mixing[j, i]`` times the
        j-th direction instead (a readout through a random rotation, say)."""
        tokens = list(range(self.d_vocab)) if tokens is None else tokens
        basis = self.layout.basis(block)
        reads = basis if mixing is None else mixing.T @ basis  # [len(tokens), d_model]
        for i, tok in enumerate(tokens):
            self.W_U[:, tok] += scale * reads[i]

    # --- attention heads --------------------------------------------------------------------

    def set_qk(self, layer: int, head: int, query: np.ndarray, key: np.ndarray, strength: float,
               offset: int = 0) -> None:
        """Attention score ``strength * sum_i (x_q · query_i)(x_k · key_i)`` before softmax.

        ``query`` and ``key`` are ``[r, d_model]``; they fill columns ``offset..offset+r`` of the
        head's W_Q / W_K, so several terms can share one head."""
        r = query.shape[0]
        self._check_rank(r + offset, layer, head)
        if strength < 0:
            raise ValueError(f"head a{layer}.h{head}: strength must be >= 0; negate the query "
                             f"directions for a repelling term")
        s = np.sqrt(strength * np.sqrt(self.d_head))  # the model divides scores by sqrt(d_head)
        self.W_Q[layer, head, :, offset:offset + r] = s * query.T
        self.W_K[layer, head, :, offset:offset + r] = s * key.T

    def set_ov(self, layer: int, head: int, read: np.ndarray, write: np.ndarray, gain: float = 1.0,
               offset: int = 0) -> None:
        """The head writes ``gain * sum_i (x · read_i) write_i`` for the positions it attends to."""
        r = read.shape[0]
        self._check_rank(r + offset, layer, head)
        self.W_V[layer, head, :, offset:offset + r] = read.T
        self.W_O[layer, head, offset:offset + r, :] = gain * write

    def _check_rank(self, r: int, layer: int, head: int) -> None:
        if r > self.d_head:
            raise ValueError(f"head a{layer}.h{head} needs rank {r} but d_head is {self.d_head}")

    def add_distractor_head(self, layer: int, head: int, rng: np.random.Generator, *,
                            read_blocks: list[str], write: dict[str, float], qk_strength: float = 4.0,
                            rank: int = 8) -> None:
        """A head with random attention over ``read_blocks`` and a random OV that writes a vector of
        norm ``write[block]`` (per unit input) into each named block: plausible-looking weights whose
        effect on the task is bounded by the chosen write sizes."""
        d = self.layout.d_model
        mask = np.zeros(d)
        for block in read_blocks:
            mask[self.layout.slices[block]] = 1.0
        query = _unit_rows(rng.standard_normal((rank, d)) * mask)
        key = _unit_rows(rng.standard_normal((rank, d)) * mask)
        self.set_qk(layer, head, query, key, qk_strength / np.sqrt(rank))
        read = _unit_rows(rng.standard_normal((rank, d)) * mask)
        out = np.zeros((rank, d))
        for block, size in write.items():
            part = rng.standard_normal((rank, self.layout.size(block)))
            out[:, self.layout.slices[block]] = size * _unit_rows(part) / np.sqrt(rank)
        self.set_ov(layer, head, read, out)

    # --- MLP neurons ------------------------------------------------------------------------

    def set_neurons(self, layer: int, neurons: list[int], read: np.ndarray, write: np.ndarray,
                    bias: np.ndarray | float = 0.0) -> None:
        """Neuron ``neurons[i]`` fires on ``x · read_i + bias_i`` and writes ``act * write_i``."""
        if not self.d_mlp:
            raise ValueError("this model has no MLPs (d_mlp = 0)")
        idx = np.asarray(neurons)
        self.W_in[layer][:, idx] = read.T
        self.b_in[layer][idx] = bias
        self.W_out[layer][idx, :] = write

    # --- basis rotation ---------------------------------------------------------------------

    def rotate(self, rng: np.random.Generator) -> np.ndarray:
        """Rotate the residual basis by a random orthogonal R: every write gets ``@ R`` and every
        read ``R.T @``, so the function is unchanged but no weight is axis-aligned any more."""
        R = random_orthogonal(self.layout.d_model, rng, keep_ones=self.layer_norm)
        self.W_E, self.W_pos = self.W_E @ R, self.W_pos @ R
        self.W_Q, self.W_K, self.W_V = (R.T @ w for w in (self.W_Q, self.W_K, self.W_V))
        self.W_O = self.W_O @ R
        self.W_in = R.T @ self.W_in
        self.W_out = self.W_out @ R
        self.W_U = R.T @ self.W_U
        self.rotation = R
        return R

    # --- export -----------------------------------------------------------------------------

    def to_bridge(self):
        """A TransformerLens 4.x ``TransformerBridge`` (native architecture) with these weights."""
        from mibench.model.bridge import boot_native

        weights = {"W_E": self.W_E, "W_pos": self.W_pos, "W_Q": self.W_Q, "W_K": self.W_K,
                   "W_V": self.W_V, "W_O": self.W_O, "W_in": self.W_in, "b_in": self.b_in,
                   "W_out": self.W_out, "W_U": self.W_U}
        return boot_native(weights, n_heads=self.n_heads, n_ctx=self.n_ctx, d_mlp=self.d_mlp,
                           layer_norm=self.layer_norm)
