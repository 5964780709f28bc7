"""Trap: constant bias components (see README.md beside this file). Zero ablation flags the bias
components (a BOS-sink head and an MLP's constant neuron) as essential; mean / resample ablation and
counterfactual patching find them irrelevant, because their output is the same on every prompt.
Every head and MLP neuron is a look-alike marker, detector, mover, sink or constant neuron."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import node_values
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import random_layer_map
from mibench.models.gating import constant_term, embed_flag, rows, set_qk_terms

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

BOS, END, MARK, DEFAULT = 0, 1, 2, 3  # DEFAULT is the wrong answer (a strong prior at END)
VOCAB = 40
N_ITEMS = 16  # the seed picks which ordinary tokens are items (possible answers); the rest fill
CONTEXT = 10  # tokens between BOS and END: fillers, MARK and the item X right after it
N_CTX = CONTEXT + 2
#: (layers, heads, neurons per MLP) per size
SHAPES = {"small": (2, 4, 6), "medium": (6, 8, 12)}
D_HEAD = N_ITEMS  # the mover's OV has rank N_ITEMS; the marker's QK rank N_CTX - 1

# Every role is built by the same recipe, strengths drawn from the same ranges, whichever channel it
# belongs to (see README.md), so nothing task-agnostic tells the circuit's components apart.
#: marker: attention score from p on p - 1; its write of the MARK flag
MARK_QK, MARK_GAIN = (10.0, 14.0), (8.0, 12.0)
#: every MLP neuron (detector or constant) reads with a norm from READ and writes with one from WRITE
READ, WRITE = (2.0, 3.0), (0.5, 0.8)
#: mover: attention score on the marked item and on its BOS sink; X's logit (or coordinate)
MOVER_QK, MOVER_SINK, MOVER_GAIN = (10.0, 14.0), (3.0, 5.0), (8.0, 12.0)
#: sink head: attention score on BOS
SINK_QK = (10.0, 14.0)
#: the unembedding reads each channel's offset direction at this scale, so a constant neuron's
#: write (READ x WRITE, 1 to 2.4) moves a logit by 8 to 19
OFFSET_READ = 8.0
#: the sink head's offset on its channel's default logit (the channel's other bias is
#: its constant neuron): larger than the answer's logit, so zeroing it costs more than any circuit node
SINK_OFFSET = (13.0, 16.0)
#: clean logit of DEFAULT before the movers write: the END token's prior minus the two offsets
MARGIN = 2.0
#: distractor channels are read into filler tokens' logits at this scale …
AUX_READ = 0.3
#: … and a distractor mover's item block into its item's own logit at a signed scale that makes
#: resample-ablating that mover move the metric by this share of the circuit's span: the noise floor.
#: Smaller at medium, where an MLP hosts ~8 detectors and resample-ablating it moves all their movers
#: at once (at the small share, up to 0.050 of the span on seeds 0-19: the strictness threshold)
NOISE_SHARE = {"small": (0.005, 0.012), "medium": (0.003, 0.008)}
#: a detector's flag that no mover reads is read into one filler's logit at this scale (~3 at X)
MARKED_READ = 3.0

# Certificate extras (generic thresholds are in mibench.certificate.THRESHOLDS).
#: zero-ablating each bias component must leave at most this much behaviour (normalized)
ZERO_DESTROYS_MAX = 0.5
#: resample- and mean-ablating it must move the behaviour by at most this (normalized)
RESAMPLE_MOVES_MAX = 0.05
#: the spread of each bias component's output over prompts (at END), relative to its norm
CONSTANT_SPREAD_MAX = 0.05


def _token_roles(seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng([seed, 7])
    ordinary = rng.permutation(np.arange(4, VOCAB))
    return sorted(int(t) for t in ordinary[:N_ITEMS]), sorted(int(t) for t in ordinary[N_ITEMS:])


@dataclass
class Plan:
    """Where every role sits. Markers are indexed by channel m (its detector reads it, writes
    ``marked@m``); movers by channel v (reads one detector's ``marked@m`` and its ``query@v``
    constant, writes ``out@v``). Index 0 is the circuit in both."""

    markers: list[tuple[int, int]] = field(default_factory=list)  # m -> head
    detectors: list[int] = field(default_factory=list)  # m -> MLP layer
    movers: list[tuple[int, int]] = field(default_factory=list)  # v -> head
    reads: list[int] = field(default_factory=list)  # v -> the marker channel whose detector it reads
    queries: list[int] = field(default_factory=list)  # v -> MLP layer of its query constant
    #: (MLP layer, mover channel) of each offset constant; the first is the circuit's bias neuron
    offsets: list[tuple[int, int]] = field(default_factory=list)
    sink: tuple[int, int] = (0, 0)  # the circuit's BOS-sink head (an offset on DEFAULT)


def plan_roles(n_layers: int, n_heads: int, d_mlp: int, layer_map: dict[int, int],
               rng: np.random.Generator) -> Plan:
    """Fill every head and MLP neuron. The circuit at the drawn layers of ``layer_map``
    (circuit.yaml layer -> model layer): marker (La) → detector (ma) → mover (Lb), its query
    constant in ma, its offsets in a sink head (anywhere) and a constant neuron of a random MLP
    other than ma (the bias MLP). The other heads are markers and movers in about equal numbers
    (layer-0 heads can only be markers); each MLP hosts as many detectors as the others (±1), each mover reads a detector below it and a
    query constant below it, and every MLP's remaining neurons are offset constants of random
    channels, so every MLP holds the same mixture (constant-ish and prompt-dependent neurons)."""
    low, high = layer_map[0], layer_map[1]
    bias_mlp = int(rng.choice([layer for layer in range(n_layers) if layer != low]))
    for _ in range(1000):
        slots = [(layer, int(h)) for layer in range(n_layers) for h in rng.permutation(n_heads)]
        marker, mover = slots[low * n_heads], slots[high * n_heads]
        plan = Plan(markers=[marker], detectors=[low], movers=[mover], reads=[0], queries=[low])
        free = [s for s in slots if s not in (marker, mover)]
        plan.sink = free.pop(int(rng.integers(len(free))))
        bottom = [s for s in free if s[0] == 0]
        upper = [free[i] for i in rng.permutation(len(free)) if free[i][0] > 0]
        n_markers = max(len(free) // 2 - len(bottom), 0)
        plan.markers += bottom + upper[:n_markers]
        plan.movers += upper[n_markers:]
        # detectors: the highest markers first, each to a random MLP at or above it with room
        quota = [len(plan.markers) // n_layers + (i < len(plan.markers) % n_layers)
                 for i in rng.permutation(n_layers)]
        quota[low] -= 1  # the circuit's detector
        plan.detectors += [-1] * (len(plan.markers) - 1)
        for m in sorted(range(1, len(plan.markers)), key=lambda m: -plan.markers[m][0]):
            room = [layer for layer in range(plan.markers[m][0], n_layers) if quota[layer] > 0]
            if not room:
                break
            plan.detectors[m] = int(rng.choice(room))
            quota[plan.detectors[m]] -= 1
        if -1 in plan.detectors:
            continue
        # movers: a detector strictly below (the least read first) and a query constant below
        n_reads = [1] + [0] * (len(plan.markers) - 1)
        load = [plan.detectors.count(layer) for layer in range(n_layers)]
        load[low] += 1  # the circuit's query constant
        load[bias_mlp] += 1  # the circuit's offset neuron
        ok = True
        for layer, _ in plan.movers[1:]:
            below = [m for m in range(len(plan.markers)) if plan.detectors[m] < layer]
            if not below:
                ok = False
                break
            fewest = min(n_reads[m] for m in below)
            m = int(rng.choice([m for m in below if n_reads[m] == fewest]))
            n_reads[m] += 1
            plan.reads.append(m)
            lightest = min(load[:layer])
            q = int(rng.choice([i for i in range(layer) if load[i] == lightest]))
            plan.queries.append(q)
            load[q] += 1
        if not ok or max(load) > d_mlp:
            continue
        plan.offsets = [(bias_mlp, 0)] + [(layer, int(rng.integers(1, len(plan.movers))))
                                              for layer in range(n_layers) for _ in range(d_mlp - load[layer])]
        return plan
    raise ValueError(f"cannot place the roles on a {n_layers}x{n_heads} model with {d_mlp} neurons per MLP")


class TrapBiasComponent(Case):
    name = "trap_bias_component"
    version = "3"
    circuit = CIRCUIT
    tier = "trap"
    sizes = tuple(SHAPES)
    failure_mode = "constant-bias components"
    description = ("a marker head, a detector MLP and a mover copy the marked item; a BOS-sink head "
                   "and an MLP write a constant bias the model relies on: zero ablation calls them essential")

    def planted(self, seed: int, size: str = DEFAULT_SIZE, *, bias: bool = True):
        """The planted weights, the truth and the bias components. ``bias=False`` removes the
        trap's mechanism: the sink head and the bias MLP's offset neuron write nothing and the END
        token's prior is lowered by what they wrote (the same logits, without the bias components)."""
        n_layers, n_heads, d_mlp = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        items, fillers = _token_roles(seed)
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        plan = plan_roles(n_layers, n_heads, d_mlp, layer_map, rng)
        n_m, n_v = len(plan.markers), len(plan.movers)
        sfx = lambda i: "" if i == 0 else f"@{i}"  # noqa: E731  channel 0 keeps the plain name
        layout = ResidualLayout({
            "tok": VOCAB, "one": 1, "bos": 1, "mark": 1, "item": 1, "pos": N_CTX,
            **{f"after{sfx(m)}": 1 for m in range(n_m)}, **{f"marked{sfx(m)}": 1 for m in range(n_m)},
            **{f"query{sfx(v)}": 1 for v in range(n_v)}, **{f"out{sfx(v)}": N_ITEMS for v in range(n_v)},
            **{f"default{sfx(v)}": 1 for v in range(n_v)}})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX, d_mlp=d_mlp)
        model.embed_tokens("tok")
        embed_flag(model, "bos", [BOS])
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "mark", [MARK])
        embed_flag(model, "item", items)
        model.embed_positions("pos")
        model.unembed("out", items)
        model.unembed("default", [DEFAULT], scale=OFFSET_READ)
        used = [0] * n_layers  # next free neuron per MLP

        def neuron(layer: int, read: np.ndarray, bias: float, write: np.ndarray) -> float:
            """One neuron with a read of norm from READ and a write of norm from WRITE (directions
            given); returns read norm × write norm."""
            a, w = rng.uniform(*READ), rng.uniform(*WRITE)
            model.set_neurons(layer, [used[layer]], a * read[None], w * write[None], bias=a * bias)
            used[layer] += 1
            return a * w

        # markers: p -> p-1, copy the MARK flag; detectors: fire on (after MARK) AND (item)
        pos = layout.basis("pos")
        marked = []  # each detector's flag on X
        for m, (head, layer) in enumerate(zip(plan.markers, plan.detectors)):
            gain = rng.uniform(*MARK_GAIN)
            model.set_qk(*head, pos[1:N_CTX], pos[:N_CTX - 1], rng.uniform(*MARK_QK))
            model.set_ov(*head, rows(layout, "mark"), rows(layout, f"after{sfx(m)}"), gain=gain)
            read = layout.direction(f"after{sfx(m)}", 0) / gain + layout.direction("item", 0)
            norm = np.linalg.norm(read)
            # fires at (2 - 1.5) / norm of its read norm on X, writes that times its write norm
            level = neuron(layer, read / norm, -1.5 / norm, layout.direction(f"marked{sfx(m)}", 0))
            marked.append(0.5 / norm * level)
            if m not in plan.reads:  # no mover reads this detector: its flag raises a filler's
                # logit at X by about as much as a mover moves the fillers it is read into
                model.unembed(f"marked{sfx(m)}", [int(rng.choice(fillers))], scale=MARKED_READ)
        # constants: read the "not BOS" flag, so they fire at the same level at every position
        one = layout.direction("one", 0)
        query = [neuron(q, one, 0.0, layout.direction(f"query{sfx(v)}", 0)) for v, q in enumerate(plan.queries)]
        # the circuit's offset neuron (first) lowers DEFAULT's logit by its level × OFFSET_READ
        offsets = [neuron(layer, one, 0.0, -layout.direction(f"default{sfx(v)}", 0) * (bias or i > 0))
                   for i, (layer, v) in enumerate(plan.offsets)]
        bias_offset = offsets[0] * OFFSET_READ
        # movers: the query constant meets the detector's flag (and a BOS sink); copy the item
        span = None
        signs = rng.permutation([1.0, -1.0] * (n_v // 2) + [1.0] * (n_v % 2))
        for v, (head, m) in enumerate(zip(plan.movers, plan.reads)):
            gain = rng.uniform(*MOVER_GAIN)
            score, sink = rng.uniform(*MOVER_QK), rng.uniform(*MOVER_SINK)  # scores on X and on BOS
            set_qk_terms(model, *head, [
                constant_term(layout, f"query{sfx(v)}", f"marked{sfx(m)}", score / (query[v] * marked[m])),
                constant_term(layout, f"query{sfx(v)}", "bos", sink / query[v])])
            model.set_ov(*head, rows(layout, "tok", items), rows(layout, f"out{sfx(v)}"), gain=gain)
            if v == 0:
                span = gain
                continue
            model.unembed(f"out{sfx(v)}", [int(t) for t in rng.permutation(fillers)[:N_ITEMS]], scale=AUX_READ)
            model.unembed(f"out{sfx(v)}", items, scale=signs[v] * rng.uniform(*NOISE_SHARE[size]) * span / gain)
            model.unembed(f"default{sfx(v)}", [int(rng.choice(fillers))], scale=AUX_READ * OFFSET_READ)
        # the sink head: every position attends BOS and writes the circuit's second offset
        sink_offset = rng.uniform(*SINK_OFFSET)
        set_qk_terms(model, *plan.sink, [constant_term(layout, "one", "bos", rng.uniform(*SINK_QK))])
        model.set_ov(*plan.sink, rows(layout, "bos"), -rows(layout, "default"),
                     gain=sink_offset / OFFSET_READ if bias else 0.0)
        prior = MARGIN + (sink_offset + bias_offset if bias else 0.0)
        embed_flag(model, "default", [END], scale=prior / OFFSET_READ)
        model.rotate(rng)
        placement = {"marker": [names.head(*plan.markers[0])], "detector": [names.mlp(plan.detectors[0])],
                     "mover": [names.head(*plan.movers[0])]}
        truth = CIRCUIT.truth(placement, layer_map=layer_map, n_layers=n_layers)
        bias_mlp = names.mlp(plan.offsets[0][0])
        return model, truth, {names.head(*plan.sink): "sink head", bias_mlp: f"{bias_mlp}'s offset neuron"}

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, bias: bool = True) -> Instance:
        self.check_size(size)
        model, truth, _ = self.planted(seed, size, bias=bias)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    def bias_components(self, seed: int, size: str = DEFAULT_SIZE) -> list[str]:
        """The trap's bias components for ``seed`` (for tests and the certificate)."""
        return sorted(self.planted(seed, size)[2])

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers, MARK, then the item X right after it), END. The answer is
        X, the wrong token DEFAULT. Corrupted prompts replace MARK by a filler (nothing is marked,
        so the mover falls back to its BOS sink and DEFAULT wins)."""
        items, fillers = _token_roles(seed)
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, where = [], [], [], []
        for _ in range(n):
            ctx = [int(t) for t in rng.choice(fillers, size=CONTEXT)]
            at = int(rng.integers(1, CONTEXT))  # index of X inside the context
            x = int(rng.choice(items))
            ctx[at] = x
            cor = list(ctx)
            ctx[at - 1] = MARK
            cor[at - 1] = int(rng.choice(fillers))
            clean.append([BOS, *ctx, END])
            corrupted.append([BOS, *cor, END])
            answer.append(x)
            where.append(at + 1)
        where_t = torch.tensor(where)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.full((n,), DEFAULT),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "MARK": where_t - 1, "X": where_t,
                       "END": torch.full((n,), N_CTX - 1)},
            variables={"X": torch.tensor(answer)}, split=split)

    # --- checks -------------------------------------------------------------------------------

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """For each bias component: zero ablation destroys the behaviour, resample and mean
        ablation leave it, and its output hardly varies over prompts."""
        model = instance.model
        comps = self.bias_components(instance.seed, instance.size)
        checks = []
        zero = node_values(model, prompts, comps, "zero", probe.seed, probe.clean_cache)
        mean = node_values(model, prompts, comps, "mean", probe.seed, probe.clean_cache)
        for c in comps:
            left = probe.normalized(probe.metric_with({c: zero[c]}))
            checks.append(Check(f"zero ablation destroys {c}", left, ZERO_DESTROYS_MAX, "<=",
                                "behaviour left after zero-ablating the bias component"))
            moved = max(abs(1.0 - probe.normalized(probe.metric_without([c]))),
                        abs(1.0 - probe.normalized(probe.metric_with({c: mean[c]}))))
            checks.append(Check(f"resample/mean ablation keeps {c}", moved, RESAMPLE_MOVES_MAX, "<=",
                                "largest move after resample- or mean-ablating it"))
            end = probe.clean_cache[c][:, -1]
            spread = float((end - end.mean(0)).norm(dim=-1).max() / end.mean(0).norm().clamp_min(1e-9))
            checks.append(Check(f"constant output {c}", spread, CONSTANT_SPREAD_MAX, "<=",
                                "largest deviation of its END output from the mean / mean's norm"))
        return checks
