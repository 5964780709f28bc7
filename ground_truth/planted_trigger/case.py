"""Planted trigger: a model with MLPs and a planted backdoor, among look-alike trigger channels that
fill every head and MLP (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, Truth, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import node_values, run_with_values
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import random_layer_map, shuffled_readout
from mibench.models.mlp import set_threshold_neurons

BOS, END = 0, 1
VOCAB = 48  # 0 = BOS, 1 = END; the rest are triggers, decoys, targets, the default and fillers
N_PAIRS = 4  # trigger_i -> target_i; one trigger neuron per pair
CONTEXT = 10  # tokens between BOS and END; exactly one is a trigger (clean) or a decoy (corrupted)
D_HEAD = 16
#: (n_layers, n_heads, d_mlp) per size. An MLP holds d_mlp / N_PAIRS key→value groups (one neuron
#: per trigger), more than a layer has heads, so that every head can feed a group of its own
#: block's MLP (the circuit's MLP also holds the circuit's group; see ``_feeds``)
SHAPES = {"small": (2, 4, 32), "medium": (6, 8, 40)}
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# The model runs one trigger "channel" per head (README.md, "Distractors"): every head is a trigger
# detector copying the trigger's features into its own block, read by key→value neuron groups. Every
# channel is built by the same recipe, its strengths drawn from the same ranges, so nothing
# task-agnostic tells the circuit's detector and MLP apart; only channel 0 writes the task's logits.
#: detector score, at END, on a key carrying a trigger feature (a decoy carries DECOY_SHARE of it),
#: and from every position on the BOS sink: at END ~all attention on the trigger (a decoy ties with
#: the sink), elsewhere on BOS, so a detector writes at END only
DETECT_QK_RANGE = (14.0, 18.0)
SINK_QK_RANGE = (6.0, 8.0)
#: a decoy's embedding carries this share of its trigger's feature
DECOY_SHARE = 0.5
#: how loudly a detector writes its copy of the trigger feature (its neurons read it back at unit
#: scale), per square root of an MLP's groups: as loud as a whole MLP (whose groups each write
#: ~VALUE_RANGE at END), so output norms do not tell heads from MLPs
COPY_RANGE = (5.0, 11.0)
#: a neuron fires only above this share of a whole trigger's copy: a trigger (1.0) fires it, a
#: decoy (DECOY_SHARE) does not
NEURON_THRESHOLD = 0.75
#: neuron gain: activation on a trigger = gain * (1 - NEURON_THRESHOLD), about 1
NEURON_GAIN_RANGE = (3.2, 4.8)
#: a neuron's write per unit of activation: the circuit's neurons add this to their target's logit
VALUE_RANGE = (6.0, 10.0)
#: how strongly the unembedding reads the other channels' neurons (their values are random
#: directions of a shared block, read through a shuffle of the vocabulary): every logit moves a
#: little, so each distractor nudges the task metric by a small non-zero amount
AUX_READ = 0.03
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
    version = "2"
    circuit = CIRCUIT
    tier = "planted"
    sizes = tuple(SHAPES)
    description = ("a detector head finds a trigger token in context; threshold MLP neurons of a "
                   "later block then output the target instead of the default; a look-alike decoy "
                   "does not; every other head and neuron group is a look-alike trigger channel")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int, size: str = DEFAULT_SIZE) -> tuple[PlantedModel, Truth]:
        """The planted weights (before export) and the truth; ``build`` exports them. Tests edit
        the weights here to remove a mechanism."""
        self.check_size(size)
        n_layers, n_heads, d_mlp = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        roles = self._token_roles(seed)
        n_ctx = CONTEXT + 2
        heads = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        layout = ResidualLayout({"tok": VOCAB, "trig": N_PAIRS, "default": 1, "out": VOCAB,
                                 "pos": n_ctx, **{f"feat{k}": N_PAIRS for k in range(len(heads))},
                                 "aux": VOCAB})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=n_ctx, d_mlp=d_mlp)
        model.embed_tokens("tok")
        model.embed_tokens("trig", roles["trigger"])  # trigger i writes trig_i …
        model.embed_tokens("trig", roles["decoy"], scale=DECOY_SHARE)  # … its decoy part of it
        model.embed_tokens("default", [END], scale=DEFAULT_LOGIT)
        model.embed_positions("pos")
        model.unembed("out")
        model.unembed("default", [roles["default"]])
        shuffled_readout(model, "aux", rng, AUX_READ)

        n_groups = d_mlp // N_PAIRS
        # the circuit's layers are drawn (in order) so that its depth gives nothing away
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        detector = (layer_map[0], int(rng.integers(n_heads)))
        trigger_group = (layer_map[1], int(rng.integers(n_groups)))
        feeds = self._feeds(rng, n_layers, n_heads, n_groups, detector, trigger_group)
        # each MLP's neurons, shuffled and cut into groups of N_PAIRS (group g, neuron i: trigger i)
        groups = [rng.permutation(d_mlp).reshape(-1, N_PAIRS).tolist() for _ in range(n_layers)]
        tok, trig = layout.basis("tok"), layout.basis("trig")
        out_targets = layout.basis("out")[roles["target"]]
        for k, (layer, h) in enumerate(heads):
            feat = layout.basis(f"feat{k}")
            copy = rng.uniform(*COPY_RANGE) * np.sqrt(n_groups)
            # from END, attend to whatever carries trigger features; from every token (the sum of
            # the token directions) to the BOS sink; copy the trigger features of what it attends to
            model.set_qk(layer, h, tok[[END] * N_PAIRS], trig, rng.uniform(*DETECT_QK_RANGE))
            model.set_qk(layer, h, tok.sum(0, keepdims=True), tok[[BOS]], rng.uniform(*SINK_QK_RANGE),
                         offset=N_PAIRS)
            model.set_ov(layer, h, trig, feat, gain=copy)
            for mlp_layer, g in feeds[(layer, h)]:
                # neuron i fires when feat_i exceeds the threshold; the circuit's writes target i's
                # logit, every other group a random direction of the block read through a shuffle
                value = rng.uniform(*VALUE_RANGE)
                if (mlp_layer, g) == trigger_group:
                    write = value * out_targets
                else:
                    # (centred over the group: whichever trigger fires, the group adds nothing on
                    # average to any one token, so the groups' writes do not pile up on a token
                    # such as the default answer when many of them are patched together)
                    directions = rng.standard_normal((N_PAIRS, VOCAB))
                    directions -= directions.mean(0)
                    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
                    write = value * directions @ layout.basis("aux")
                set_threshold_neurons(model, mlp_layer, groups[mlp_layer][g], feat / copy, write,
                                      NEURON_THRESHOLD, rng.uniform(*NEURON_GAIN_RANGE))
        model.rotate(rng)
        mlp_layer, group = trigger_group
        placement = {"trigger_detector": [names.head(*detector)], "trigger_neuron": [names.mlp(mlp_layer)]}
        neurons = {names.neuron(mlp_layer, i): "trigger_neuron" for i in groups[mlp_layer][group]}
        return model, CIRCUIT.truth(placement, neurons=neurons, layer_map=layer_map, n_layers=n_layers)

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        model, truth = self.planted(seed, size)
        return Instance(model=model.to_bridge(), seed=seed, size=size, truth=truth)

    @staticmethod
    def _feeds(rng: np.random.Generator, n_layers: int, n_heads: int, n_groups: int, detector: tuple[int, int],
               trigger_group: tuple[int, int]) -> dict[tuple[int, int], list[tuple[int, int]]]:
        """Which neuron groups (MLP layer, group) read each head's copy. The circuit's detector
        feeds the trigger neurons only; every other head feeds a group of its own block's MLP
        (which reads the block's attention; SHAPES leaves room for one per head), and every group
        left over reads a random head at or below its layer. So every head and every group is
        busy, and every MLP hosts the same number of groups."""
        free = {layer: [int(g) for g in rng.permutation(n_groups)] for layer in range(n_layers)}
        free[trigger_group[0]].remove(trigger_group[1])
        heads = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        feeds = {head: [] for head in heads}
        feeds[detector] = [trigger_group]
        others = [head for head in heads if head != detector]
        for layer, h in others:
            feeds[(layer, h)].append((layer, free[layer].pop()))
        for m in range(n_layers):
            readers = [head for head in others if head[0] <= m]
            for g in free[m]:
                feeds[readers[int(rng.integers(len(readers)))]].append((m, g))
        return feeds

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
