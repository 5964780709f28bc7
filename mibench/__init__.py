"""mibench: does this interpretability technique find the circuit that is really there?

The public API for adapter authors is :mod:`mibench.api` (Technique, CaseView, make_scores) and
:mod:`mibench.model` (the model-access layer: hook names, writes, caching, patching, ablation).
Importing this package imports no heavy library; torch and TransformerLens load where they are used.
"""
__version__ = "0.1.0"
