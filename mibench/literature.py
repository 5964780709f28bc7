"""The literature tier: circuits that papers found in GPT-2 small, scored on the user's own weights.

A literature case's labels are the paper's, fixed to components in its ``circuit.yaml``
(``components`` per role), so its truth needs no weights (:meth:`LiteratureCase.truth`: enough to
score a graph made elsewhere). Its model is GPT-2 as :mod:`mibench.model.pretrained` finds it; the
seed draws the prompts only. Its certificate measures the labels on those weights and flags the
ones the measurement contradicts, instead of gating (:func:`mibench.certificate.certify`): papers'
circuits are known to be incomplete, and a result on them is a comparison with the field's account,
not with a truth known by construction.
"""
from __future__ import annotations

from typing import ClassVar

from mibench import names
from mibench.api import DEFAULT_SIZE, SIZES, Case, Instance, MibenchError, Truth

#: GPT-2 small: the shape every label of the tier is stated in
GPT2_SMALL = names.Shape(n_layers=12, n_heads=12, d_mlp=3072)


class LiteratureCase(Case):
    tier = "literature"
    #: one model whatever the size: ``--size`` only files the results beside that size's others
    sizes = SIZES
    shape: ClassVar[names.Shape] = GPT2_SMALL

    def truth(self, seed: int = 0, size: str = DEFAULT_SIZE) -> Truth:  # noqa: ARG002 - the paper's labels
        return self.circuit.truth(self.circuit.fixed_placement())

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        from mibench.model.pretrained import load_gpt2

        self.check_size(size)
        model = load_gpt2()
        found = names.Shape.of(model)
        if (found.n_layers, found.n_heads) != (self.shape.n_layers, self.shape.n_heads):
            raise MibenchError(f"case {self.name!r} labels heads of GPT-2 small ({self.shape.n_layers} "
                               f"layers x {self.shape.n_heads} heads); the checkpoint has "
                               f"{found.n_layers} x {found.n_heads}: pass --model-path with GPT-2 small")
        return Instance(model=model, truth=self.truth(seed, size), seed=seed, size=size)

    @staticmethod
    def tokenizer():
        from mibench.model.pretrained import load_tokenizer

        return load_tokenizer()
