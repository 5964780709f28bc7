"""The model-access layer: the only code that knows TransformerLens.

* :mod:`~mibench.model.hooks` — hook names, and where each component's value lives among them;
* :mod:`~mibench.model.bridge` — building native bridges, block internals for partial reruns, the
  library's workarounds;
* :mod:`~mibench.model.weights` — a head's write, a write's logits, the readers' weight matrices;
* :mod:`~mibench.model.layernorm` — norm kinds, frozen scales, the exact norm VJP;
* :mod:`~mibench.model.ablation` — caching, patching and ablation (one implementation);
* :mod:`~mibench.model.edges` — interventions on edges: masked mixes of current and corrupted
  writes at every receiver (ACDC, edge pruning); :mod:`~mibench.model.paths` — path patching on it;
* :mod:`~mibench.model.gradients` — gradients into every node's inputs (AtP, EAP, EAP-IG);
* :mod:`~mibench.model.readout` — direct effects and decoding residuals (DLA, the lenses);
* :mod:`~mibench.model.noising` — embedding noise for causal tracing;
* :mod:`~mibench.model.passes` — counting forward and backward passes.

Cases, techniques and the rest of the engine call these and never spell a hook name or index a
weight tensor (``tests/test_model_layer.py`` checks it), so a TransformerLens upgrade or a new
architecture touches this package only. Importing it imports nothing heavy.
"""
