"""Edge interventions: forwards in which chosen sender→receiver edges carry the corrupted run.

The one implementation of edge patching on the suite's graph (:func:`mibench.names.edges`):
senders are ``input``, every head and every MLP; receivers are each head's q, k and v input, each
MLP's input and ``logits``. In a forward with a mask ``keep[sender, receiver]`` every receiver
reads, in place of the residual stream,

    resid + Σ_senders (1 − keep[s, r]) · (corrupted_write(s) − current_write(s)),

where ``current_write`` is the sender's write in *this* run (so a receiver whose input changed
passes its changed output downstream) and ``corrupted_write`` its write on the corrupted prompts.
keep = 1 everywhere is the clean run, keep = 0 everywhere the corrupted run, one zero is path
patching of that edge (Wang et al. 2022); a binary mask is ACDC's circuit (Conmy et al. 2023), a
continuous one Edge Pruning's (Bhaskar et al. 2024), and the forward is differentiable in it.

Receivers read through projections, so a head's projected input changes by ``(ln1(r + Δ) −
ln1(r)) @ W_Q[h]`` (likewise K, V; an MLP's by ``(ln2(r + Δ) − ln2(r)) @ W_in``; the final
residual by Δ): the norm is applied for real. The changes are added at the hooks the receivers read
(``hook_q`` / ``hook_k`` / ``hook_v``, ``mlp.hook_pre``, ``ln_final.hook_in``), one tensor per
receiver group of a block. A batch of masks runs in one pass with the prompts repeated per mask.

Only what can change is computed: a mask that removes no edge into a receiver group leaves that
group untouched, only senders with a removed edge have their writes kept, and a run may start at
block ``start`` from the clean residual stream when no removed edge enters an earlier block
(everything before it is then the clean run). Reading only the metric's positions limits the
unembedding to them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mibench import names
from mibench.model import bridge, gradients, hooks, layernorm, weights


def receiver_key(dst: names.Node, kind: str | None) -> str:
    """A receiver's name, as :func:`mibench.model.gradients.input_gradients` keys it."""
    return f"{dst.name}<{kind}>" if kind else dst.name


@dataclass(frozen=True)
class Graph:
    """The edge graph of a model shape as index tables.

    ``senders`` are in forward order (``input``, then block by block its heads and MLP), so the
    senders upstream of any receiver are a prefix: ``upstream[r]`` of them. ``edge_index[e]`` is
    ``(sender, receiver)`` of ``edges[e]`` (the order of :func:`mibench.names.edges`)."""

    shape: names.Shape
    senders: list[str]
    receivers: list[str]
    edges: list[str]
    edge_index: torch.Tensor  # [E, 2] long
    upstream: list[int]  # per receiver: how many senders (a prefix) feed it
    receiver_layer: list[int]  # per receiver: its block (n_layers for logits)

    @classmethod
    def of(cls, shape: names.Shape) -> "Graph":
        senders = ["input", *names.nodes(shape)]
        receivers, upstream, layer_of = [], [], []
        for layer in range(shape.n_layers):
            before = 1 + layer * (shape.n_heads + int(shape.has_mlp))
            for kind in "qkv":
                for h in range(shape.n_heads):
                    receivers.append(f"{names.head(layer, h)}<{kind}>")
                    upstream.append(before)
                    layer_of.append(layer)
            if shape.has_mlp:
                receivers.append(names.mlp(layer))
                upstream.append(before + shape.n_heads)
                layer_of.append(layer)
        receivers.append("logits")
        upstream.append(len(senders))
        layer_of.append(shape.n_layers)
        s_i = {s: i for i, s in enumerate(senders)}
        r_i = {r: i for i, r in enumerate(receivers)}
        edges = names.edges(shape)
        pairs = []
        for edge in edges:
            src, dst, kind = names.parse_edge(edge)
            pairs.append((s_i[src.name], r_i[receiver_key(dst, kind)]))
        return cls(shape, senders, receivers, edges, torch.tensor(pairs, dtype=torch.long),
                   upstream, layer_of)

    def keep_mask(self, edge_keep: torch.Tensor) -> torch.Tensor:
        """Dense masks ``[..., senders, receivers]`` from per-edge values ``[..., edges]`` (ones
        where no edge exists; differentiable in ``edge_keep``)."""
        lead = edge_keep.shape[:-1]
        dense = torch.ones(*lead, len(self.senders) * len(self.receivers), dtype=edge_keep.dtype)
        flat = self.edge_index[:, 0] * len(self.receivers) + self.edge_index[:, 1]
        dense[..., flat] = edge_keep
        return dense.reshape(*lead, len(self.senders), len(self.receivers))

    def groups(self) -> list[tuple[str, int, str, list[int]]]:
        """Receivers read together: ``(hook, layer, what, receiver indices)`` with ``what`` one of
        ``q`` / ``k`` / ``v`` (a block's heads, in head order), ``mlp`` or ``logits``."""
        out = []
        by_key: dict[tuple[int, str], list[int]] = {}
        for r, name in enumerate(self.receivers):
            what = "logits" if name == "logits" else "mlp" if "<" not in name else name[-2]
            by_key.setdefault((self.receiver_layer[r], what), []).append(r)
        for (layer, what), idx in by_key.items():
            hook = hooks.RESID_FINAL if what == "logits" else hooks.mlp_pre(layer) if what == "mlp" \
                else hooks.attn(layer, what)
            out.append((hook, layer, what, idx))
        return out


#: below this share of removed (mask, sender, receiver) entries, the changes are gathered one
#: removed edge at a time rather than as a dense product (path patching removes one edge per mask);
#: below this share of kept entries, the sum of all changes less the kept ones (ACDC's late
#: circuits keep a few edges of thousands)
SPARSE_BELOW = 0.05


def _mix(removed: torch.Tensor, changes: torch.Tensor, pair_of: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """``out[p] = Σ_s removed[b, s, r] · changes[(b,) s]`` for each (mask b, receiver r) pair ``p``
    (``pair_of[b, r]``, numbered in row-major order, −1 for pairs not asked for): ``[pairs, N]``
    from ``removed`` ``[B, S, R]`` and ``changes`` ``[S, N]`` (the same for every mask) or
    ``[B, S, N]``. Dense as a matrix product; without a gradient, and when few entries are
    removed (or few kept), only those are gathered."""
    asked = pair_of >= 0
    n_removed = int(removed.detach().count_nonzero())
    n_kept = int((removed.detach() != 1).count_nonzero())
    if removed.requires_grad or min(n_removed, n_kept) > SPARSE_BELOW * removed.numel():
        full = torch.einsum("bsr,sN->brN", removed, changes) if changes.dim() == 2 else \
            torch.bmm(removed.transpose(1, 2), changes)
        return full[asked]
    if n_removed <= n_kept:
        b, s, r = removed.nonzero(as_tuple=True)
        out, weight = changes.new_zeros(n_pairs, changes.shape[-1]), removed[b, s, r]
    else:  # Σ_s changes − Σ_s (1 − removed) · changes, over the few kept entries
        pair_b = asked.nonzero(as_tuple=True)[0]
        out = changes.sum(0).expand(n_pairs, -1).clone() if changes.dim() == 2 else changes.sum(1)[pair_b]
        b, s, r = (removed != 1).nonzero(as_tuple=True)
        weight = removed[b, s, r] - 1
    p = pair_of[b, r]
    b, s, p, weight = b[p >= 0], s[p >= 0], p[p >= 0], weight[p >= 0]
    rows = changes[s] if changes.dim() == 2 else changes[b, s]
    return out.index_add_(0, p, rows * weight[:, None])


class EdgePatcher:
    """A prompt set's clean and corrupted runs, ready for forwards with edges removed.

    ``run(keep)`` takes masks ``[B, senders, receivers]`` (see :meth:`Graph.keep_mask`) and returns
    the logits ``[B, n, positions, vocab]`` at ``read_positions`` (every position when None)."""

    def __init__(self, model, clean: torch.Tensor, corrupted: torch.Tensor,
                 read_positions: list[int] | None = None) -> None:
        self.model = model
        self.shape = names.Shape.of(model)
        self.graph = Graph.of(self.shape)
        self.read_positions = read_positions
        self.n_prompts = int(clean.shape[0])
        self.clean = gradients.forward(model, clean)
        clean_w = gradients.writes(model, self.clean)
        corrupted_w = gradients.writes(model, gradients.forward(model, corrupted))
        self.clean_writes = torch.stack([clean_w[s] for s in self.graph.senders])  # [S, n, seq, d]
        self.corrupted_writes = torch.stack([corrupted_w[s] for s in self.graph.senders])
        self.fixed_changes = (self.corrupted_writes - self.clean_writes).flatten(1)  # [S, N]
        logits = self.clean.logits
        self.clean_logits = logits if read_positions is None else logits[:, read_positions]
        self._groups = self.graph.groups()

    def start_layer(self, keep: torch.Tensor) -> int:
        """The first block into which ``keep`` removes an edge (where a run must start)."""
        removed = (keep != 1).any(dim=(0, 1)) if keep.dim() == 3 else (keep != 1).any(dim=0)
        layers = [self.graph.receiver_layer[r] for r in torch.nonzero(removed).flatten().tolist()]
        return min(layers, default=self.shape.n_layers)

    def run(self, keep: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """Logits ``[B, n, positions, vocab]`` of the forwards with masks ``keep`` ``[B, S, R]``.
        ``start`` (default: the first block with a removed edge) may be any block up to that one."""
        first = self.start_layer(keep)
        start = first if start is None else start
        if start > first:
            raise ValueError(f"a run from block {start} would miss edges removed into block {first}")
        batch, n = keep.shape[0], self.n_prompts
        removed = 1 - keep
        touched = removed.detach().ne(0)
        g = self.graph
        # senders before block `start` write as in the clean run: their changes are fixed [S0, N]
        fixed = 1 + start * (self.shape.n_heads + int(self.shape.has_mlp))
        # later senders' changes corrupted − current, one tensor per block part [B, senders, N]
        blocks: list[tuple[int, torch.Tensor]] = []  # (first sender, changes)
        resid: dict[str, torch.Tensor] = {}

        def change(idx: list[int]):
            """The (mask, receiver) pairs of receivers ``idx`` whose input changes — ``b``, ``r``
            (an index into ``idx``) — and their changes Σ_s removed[b, s, r] (corrupted(s) −
            current(s)) ``[pairs, n, seq, d]``; None when nothing changes. With a gradient, every
            pair (a mask entry at exactly 1 still has one)."""
            if not touched[:, :, idx].any():
                return None
            up = g.upstream[idx[0]]
            rem = removed[:, :, idx]  # [B, S, R]
            asked = torch.ones_like(touched[:, 0, idx]) if rem.requires_grad else touched[:, :, idx].any(1)
            b, r = torch.nonzero(asked, as_tuple=True)
            pair_of = torch.full(asked.shape, -1, dtype=torch.long)
            pair_of[b, r] = torch.arange(len(b))
            k = min(fixed, up)
            total = _mix(rem[:, :k], self.fixed_changes[:k], pair_of, len(b))
            for first, changes in blocks:
                if first < up:
                    total = total + _mix(rem[:, first:first + changes.shape[1]], changes, pair_of, len(b))
            return b, r, total.unflatten(-1, self.clean_writes.shape[1:])

        def capture_resid(name):
            def hook(act, hook):  # noqa: ARG001 - TransformerLens hook signature
                resid[name] = act
                return act
            return hook

        def capture_writes(first, count, per_sender):
            """Keep senders ``first`` … ``first + count``'s changes (when any of their edges is removed)."""
            def hook(act, hook):  # noqa: ARG001
                if touched[:, first:first + count].any():
                    current = per_sender(act).unflatten(1, (batch, n)).flatten(2).transpose(0, 1)  # [B, c, N]
                    blocks.append((first, self.corrupted_writes[first:first + count].flatten(1) - current))
                return act
            return hook

        heads_of = lambda layer: lambda z: weights.head_writes(self.model, layer, z)  # noqa: E731
        identity_norm = layernorm.kind(self.model) == ""

        def project(layer, which, x, delta):
            """The change of the normed input (exactly Δ without a norm) through the reader's weights."""
            if not identity_norm:
                delta = bridge.apply_block_norm(self.model, layer, which, x + delta) - \
                    bridge.apply_block_norm(self.model, layer, which, x)
            return delta

        def add_change(layer, what, idx):
            """Add each changed pair's projected change to its mask's rows of the receivers' hook."""
            def hook(act, hook):  # noqa: ARG001
                changed = change(idx)
                if changed is None:
                    return act
                b, r, delta = changed  # delta [pairs, n, seq, d]
                per_mask = act.unflatten(0, (batch, n))  # [B, n, seq, ...]
                if what == "logits":
                    return per_mask.index_add(0, b, delta).flatten(0, 1)
                if what == "mlp":
                    mid = resid[hooks.resid_mid(layer)].unflatten(0, (batch, n))[b]
                    added = project(layer, "ln2", mid, delta) @ weights.reader_weights(self.model, layer, "mlp")
                    return per_mask.index_add(0, b, added).flatten(0, 1)
                x = resid[hooks.resid_pre(layer)].unflatten(0, (batch, n))[b]  # [pairs, n, seq, d]
                added = torch.einsum("tnpd,tdk->tnpk", project(layer, "ln1", x, delta),
                                     weights.reader_weights(self.model, layer, what)[r])
                heads = per_mask.shape[3]  # act [B·n, seq, head, d_head]: pairs add at (b, head r)
                by_head = per_mask.permute(0, 3, 1, 2, 4).reshape(batch * heads, *added.shape[1:])
                by_head = by_head.index_add(0, b * heads + r, added)
                return by_head.unflatten(0, (batch, heads)).permute(0, 2, 3, 1, 4).flatten(0, 1)
            return hook

        fwd = []
        for layer in range(start, self.shape.n_layers):
            first = 1 + layer * (self.shape.n_heads + int(self.shape.has_mlp))
            fwd += [(hooks.resid_pre(layer), capture_resid(hooks.resid_pre(layer))),
                    (hooks.attn(layer, "z"), capture_writes(first, self.shape.n_heads, heads_of(layer)))]
            if self.shape.has_mlp:
                fwd += [(hooks.resid_mid(layer), capture_resid(hooks.resid_mid(layer))),
                        (hooks.mlp_out(layer), capture_writes(first + self.shape.n_heads, 1, lambda a: a[None]))]
        fwd += [(hook, add_change(layer, what, idx)) for hook, layer, what, idx in self._groups
                if layer >= start]
        x = self.clean.acts[hooks.resid_pre(start)] if start < self.shape.n_layers else \
            self.clean.acts[hooks.RESID_FINAL]
        x = x.repeat(batch, 1, 1)
        with self.model.hooks(fwd_hooks=fwd):
            for layer in range(start, self.shape.n_layers):
                x = bridge.run_block(self.model, layer, x)
            logits = bridge.unembed_final(self.model, x, self.read_positions)
        return logits.unflatten(0, (batch, n))
