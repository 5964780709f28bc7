"""Counting a technique's cost in forward and backward passes over its prompt set.

A hook on the unembedding sees every full forward pass; a forward on a batch of ``b`` prompts
counts ``b / n_prompts`` passes, so patching 8 heads in one batched pass costs 8 pass-equivalents,
as it would one at a time. A backward pass is counted when a gradient reaches the logits.
"""
from __future__ import annotations


class PassCounter:
    def __init__(self, model, n_prompts: int) -> None:
        self.model, self.n_prompts = model, max(int(n_prompts), 1)
        self.forward_rows = 0
        self.backward_rows = 0
        self._handle = None

    def _on_forward(self, module, inputs, output) -> None:  # noqa: ARG002 - torch hook signature
        rows = int(output.shape[0])
        self.forward_rows += rows
        if output.requires_grad:
            output.register_hook(lambda grad: self._on_backward(rows))

    def _on_backward(self, rows: int) -> None:
        self.backward_rows += rows

    @property
    def forward_passes(self) -> float:
        return self.forward_rows / self.n_prompts

    @property
    def backward_passes(self) -> float:
        return self.backward_rows / self.n_prompts

    def __enter__(self) -> "PassCounter":
        self._handle = self.model.unembed.register_forward_hook(self._on_forward)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
