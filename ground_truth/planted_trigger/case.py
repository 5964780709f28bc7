"""Planted trigger: a 2-layer model with MLPs and a planted backdoor (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import node_values, run_with_values
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.mlp import add_distractor_neurons, set_threshold_neurons

BOS, END = 0, 1
VOCAB = 48  # 0 = BOS, 1 = END; the rest are triggers, decoys, targets, the default and fillers
N_PAIRS = 4  # trigger_i -> target_i; one trigger neuron per pair
CONTEXT = 10  # tokens between BOS and END; exactly one is a trigger (clean) or a decoy (corrupted)
N_HEADS = 4
D_HEAD = 16
D_MLP = 32
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Planted strengths. A decoy's embedding carries DECOY_SHARE of its trigger's direction; the
# detector copies that feature to END and each trigger neuron fires only above NEURON_THRESHOLD,
# so a trigger (feature 1.0) fires it and a decoy (0.5) does not.
DETECT_QK, SINK_QK = 16.0, 4.0
DECOY_SHARE = 0.5
NEURON_THRESHOLD, NEURON_GAIN = 0.75, 4.0  # activation on a trigger: 4 * (1 - 0.75) = 1
TARGET_LOGIT = 8.0  # target logit per unit of trigger-neuron activation
DEFAULT_LOGIT = 3.0  # the END token's own (bigram) vote for the default answer

# Thresholds of the case's own checks.
#: share of decoy (corrupted) prompts on which the default answer still beats the target
SPECIFICITY_MIN = 0.9
#: behaviour left (normalized) after resample-ablating the trigger neurons together
NEURON_NECESSITY_MAX = 0.5
#: behaviour left (normalized) after resample-ablating every other neuron of their MLP
NEURON_SUFFICIENCY_MIN = 0.9
#: share of the clean − corrupted metric gap removed by patching one truth site from the corrupted run
SITE_NECESSITY_MIN = 0.5
#: largest share of that gap that patching any other site may remove
SITE_STRICTNESS_MAX = 0.05


class PlantedTrigger(Case):
    name = "planted_trigger"
    version = "1"
    circuit = CIRCUIT
    tier = "planted"
    description = ("a detector head (L0) finds a trigger token in context; threshold MLP neurons "
                   "(L1) then output the target instead of the default; a look-alike decoy does not")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int) -> tuple[PlantedModel, dict[str, list[str]], dict[str, str]]:
        """The planted weights (before export), where each role sits and the neuron truth;
        ``build`` exports them. Tests edit the weights here to remove a mechanism."""
        rng = np.random.default_rng([seed, 0])
        roles = self._token_roles(seed)
        triggers, decoys, targets = roles["trigger"], roles["decoy"], roles["target"]
        n_ctx = CONTEXT + 2
        layout = ResidualLayout({"tok": VOCAB, "trig": N_PAIRS, "feat": N_PAIRS, "default": 1,
                                 "out": VOCAB, "pos": n_ctx, "junk": 16})
        model = PlantedModel(layout, n_layers=2, n_heads=N_HEADS, d_head=D_HEAD, d_vocab=VOCAB,
                             n_ctx=n_ctx, d_mlp=D_MLP)
        model.embed_tokens("tok")
        model.embed_tokens("trig", triggers)  # trigger i writes trig_i …
        model.embed_tokens("trig", decoys, scale=DECOY_SHARE)  # … its decoy part of it
        model.embed_tokens("default", [END], scale=DEFAULT_LOGIT)
        model.embed_positions("pos")
        model.unembed("out")
        model.unembed("default", [roles["default"]])

        detector = int(rng.integers(0, N_HEADS))
        neurons = sorted(int(i) for i in rng.choice(D_MLP, size=N_PAIRS, replace=False))
        tok, trig, feat = layout.basis("tok"), layout.basis("trig"), layout.basis("feat")
        # detector: from END, attend to whatever carries trigger features (BOS is the sink) and
        # copy those features into the "feat" subspace at END
        model.set_qk(0, detector, tok[[END] * N_PAIRS], trig, DETECT_QK)
        model.set_qk(0, detector, tok[[END]], tok[[BOS]], SINK_QK, offset=N_PAIRS)
        model.set_ov(0, detector, trig, feat)
        # trigger neurons: neuron i fires when feat_i exceeds the threshold, writes target_i
        set_threshold_neurons(model, 1, neurons, feat, TARGET_LOGIT * layout.basis("out")[targets],
                              NEURON_THRESHOLD, NEURON_GAIN)

        for h in range(N_HEADS):
            if h != detector:
                model.add_distractor_head(0, h, rng, read_blocks=["tok", "pos"],
                                          write={"junk": 1.0, "out": 0.3})
            model.add_distractor_head(1, h, rng, read_blocks=["tok", "pos", "junk"],
                                      write={"junk": 1.0, "out": 0.3})
        add_distractor_neurons(model, 0, list(range(D_MLP)), rng, read_blocks=["tok", "pos", "junk"],
                               write={"junk": 0.5, "out": 0.1})
        add_distractor_neurons(model, 1, [i for i in range(D_MLP) if i not in neurons], rng,
                               read_blocks=["tok", "pos", "junk"], write={"junk": 0.5, "out": 0.1})
        model.rotate(rng)
        placement = {"trigger_detector": [names.head(0, detector)], "trigger_neuron": [names.mlp(1)]}
        return model, placement, {names.neuron(1, i): "trigger_neuron" for i in neurons}

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        self.check_size(size)
        model, placement, neurons = self.planted(seed)
        return Instance(model=model.to_bridge(), seed=seed, size=size,
                        truth=CIRCUIT.truth(placement, neurons=neurons))

    @staticmethod
    def _token_roles(seed: int) -> dict:
        """Which tokens are triggers, decoys (decoy i resembles trigger i), targets (trigger i
        makes the model say target i), the default answer and the fillers."""
        rng = np.random.default_rng([seed, 2])
        toks = rng.permutation(np.arange(2, VOCAB)).tolist()
        k = N_PAIRS
        return {"trigger": toks[:k], "decoy": toks[k:2 * k], "target": toks[2 * k:3 * k],
                "default": toks[3 * k], "filler": toks[3 * k + 1:]}

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one trigger at a random place), END. The answer is the
        trigger's target, the wrong token the default answer. Corrupted prompts put the trigger's
        decoy in its place: the default behaviour."""
        roles = self._token_roles(seed)
        fillers = np.array(roles["filler"])
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, where, trigger = [], [], [], [], []
        for _ in range(n):
            ctx = rng.permutation(fillers)[:CONTEXT]
            i = int(rng.integers(0, N_PAIRS))
            at = int(rng.integers(0, CONTEXT))
            trig, decoy = ctx.copy(), ctx.copy()
            trig[at], decoy[at] = roles["trigger"][i], roles["decoy"][i]
            clean.append([BOS, *trig, END])
            corrupted.append([BOS, *decoy, END])
            answer.append(roles["target"][i])
            where.append(at + 1)
            trigger.append(i)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.full((n,), roles["default"]),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "TRIG": torch.tensor(where),
                       "END": torch.full((n,), CONTEXT + 1)},
            variables={"trigger": torch.tensor(trigger)}, split=split)

    # --- checks -------------------------------------------------------------------------------

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """Specificity (the decoy keeps the default answer), the neuron-level circuit (the trigger
        neurons carry the behaviour and the rest of their MLP does not) and the site truth (patching
        each truth site from the corrupted run removes most of the behaviour; any other site,
        almost none)."""
        model = instance.model
        truth_neurons = sorted(instance.truth.neurons)
        layer = names.node_layer(truth_neurons[0])
        others = [names.neuron(layer, i) for i in range(model.cfg.d_mlp)
                  if names.neuron(layer, i) not in instance.truth.neurons]
        with torch.no_grad():
            final = model(prompts.corrupted)[:, -1]
        idx = torch.arange(len(prompts))
        kept_default = float((final[idx, prompts.wrong] > final[idx, prompts.answer]).float().mean())
        values = node_values(model, prompts, truth_neurons + others, "resample", probe.seed)
        without = probe.normalized(probe.metric_with({n: values[n] for n in truth_neurons}))
        keeping = probe.normalized(probe.metric_with({n: values[n] for n in others}))
        checks = [
            Check("specificity", kept_default, SPECIFICITY_MIN, ">=",
                  "share of decoy prompts whose default answer still beats the target"),
            Check("neuron necessity", without, NEURON_NECESSITY_MAX, "<=",
                  f"behaviour left after resample-ablating the {len(truth_neurons)} trigger neurons"),
            Check("neuron sufficiency", keeping, NEURON_SUFFICIENCY_MIN, ">=",
                  f"behaviour left after resample-ablating the other {len(others)} neurons of m{layer}"),
        ]
        return checks + self._site_checks(instance, prompts, probe.metric)

    def _site_checks(self, instance: Instance, prompts: PromptSet, metric) -> list[Check]:
        """Patch each residual site from the corrupted run into the clean run; the share of the
        clean − corrupted metric gap it removes (1 = the corrupted behaviour)."""
        model = instance.model
        truth_sites = sorted(s for sites in instance.truth.sites.values() for s in sites)
        all_sites = names.sites(names.Shape.of(model), list(prompts.positions))
        corrupted = node_values(model, prompts, all_sites, "corrupted")
        with torch.no_grad():
            m_clean = float(metric(model(prompts.clean)))
            m_corrupted = float(metric(model(prompts.corrupted)))
        gap = m_clean - m_corrupted

        def removed(site: str) -> float:
            logits = run_with_values(model, prompts.clean, {site: corrupted[site]},
                                     positions=prompts.positions)
            return (m_clean - float(metric(logits))) / gap

        checks = [Check(f"site necessity {s}", removed(s), SITE_NECESSITY_MIN, ">=",
                        f"share of the clean − corrupted gap removed by patching {s} from the "
                        f"corrupted run") for s in truth_sites]
        others = {s: abs(removed(s)) for s in all_sites if s not in truth_sites}
        worst = max(others, key=others.get)
        checks.append(Check("site strictness", others[worst], SITE_STRICTNESS_MAX, "<=",
                            f"largest share of the gap removed by patching a non-truth site ({worst})"))
        return checks
