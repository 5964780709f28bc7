"""Indirect Object Identification: a planted attention-only model (see README.md beside this file)
with the circuit of Wang et al. 2022, including negative and backup name movers; every other head
belongs to a look-alike copy of that circuit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.readout import direct_effects, metric_gradient
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import Channel, random_layer_map, shuffled_readout
from mibench.models.gating import (QKTerm, embed_flag, match_term, rows, self_exclusion_term,
                                   set_qk_terms)

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# --- vocabulary -------------------------------------------------------------------------------
BOS, AND, COMMA, TO = 0, 1, 2, 3  # special tokens; TO ends every prompt (the END position)
N_SPECIAL = 4
VOCAB = 40
#: The seed picks which of the 36 ordinary tokens are names; the rest are fillers. Every channel
#: keeps three blocks with one direction per name, so the name count sets the model's width.
N_NAMES = 12

# --- templates --------------------------------------------------------------------------------
# Slots: "A" first name, "B" second name, "S2" the repeated subject, "f" a random filler token.
# ABBA: A = IO, B = S.  BABA: A = S, B = IO.  Every template has the same length; S2 sits at a
# different index in each frame so that resample ablation (values from another prompt at the same
# index) does not keep the "duplicated" flag in place.
FRAMES = [
    ["BOS", "f", "A", "and", "B", "f", "f", "f", ",", "S2", "f", "f", "f", "END"],
    ["BOS", "f", "f", "A", "and", "B", "f", ",", "S2", "f", "f", "f", "f", "END"],
    ["BOS", "A", "and", "B", "f", "f", "f", "f", "f", ",", "f", "S2", "f", "END"],
    ["BOS", "f", "f", "f", "A", "and", "B", "f", "f", ",", "S2", "f", "f", "END"],
    ["BOS", "f", "A", "and", "B", ",", "S2", "f", "f", "f", "f", "f", "f", "END"],
    ["BOS", "A", "and", "B", "f", "f", ",", "f", "f", "f", "f", "f", "S2", "END"],
]
SEQ = len(FRAMES[0])
N_CTX = 16

# --- planted strengths (attention scores are in logits of the softmax) -----------------------
# Every head of every channel is built by its role's recipe below; each head draws one sharpness
# factor (multiplying all its attention scores) and one gain factor (multiplying its write) from
# SHARPNESS and GAIN, whichever channel it belongs to, so the circuit's heads are draws from the
# same distributions as their look-alikes.
DUP_QK, DUP_SINK = 12.0, 6.0  # duplicate-token: same name 12, own position −12, BOS sink 6
PREV_QK = 12.0  # previous-token head
IND_QK, IND_SINK = 12.0, 6.0  # induction: token vs previous token 12, BOS sink 6
SI_QK, SI_SINK = 10.0, 5.0  # S-inhibition: 10 per unit of "duplicated" flag (2 with both routes)
NM_NAME, NM_INHIBIT = 8.0, 10.0  # name movers: +8 on names, −10 on the inhibited name
NM_GAIN, NEG_GAIN = 10.0, 3.0  # name mover writes +10·IO, the negative name mover −3·IO
# Backup gate: +10 on names, −12 on the inhibited name, −2 per unit of the residual's current
# prediction of the key's token, BOS sink 9.5 (a = 10 > sink > a − c). Clean: IO scores
# 10 − 2·7 = −4 ≪ 9.5 (silent); name mover ablated: IO scores 10 + 2·3 = 16 ≫ 9.5 (the negative
# head's −3·IO only opens the gate wider); ABC run: each name scores 10 − 2·7/3 ≈ 5.3 < 9.5, so
# the backup stays nearly silent there too and patching it from the corrupted run does little.
# The draws below keep every one of these inequalities with a margin of at least 3.
BK_NAME, BK_INHIBIT, BK_PREDICT, BK_SINK, BK_GAIN = 10.0, 12.0, 2.0, 9.5, 10.0
SHARPNESS = (0.9, 1.1)
#: narrower than SHARPNESS: the backup replaces the name mover's write with its own, so a gap
#: between their gains is behaviour the backup compensation check sees as lost
GAIN = (0.95, 1.05)
#: How strongly the unembedding reads a look-alike channel's output (through its own random
#: shuffle of the vocabulary): its name movers' prediction of the indirect object moves some other
#: token's logit by about 0.7, well below the circuit's ~7. The shuffle sends a channel's IO to IO
#: or S on a few prompts, so each look-alike moves the task metric a little: a small, consistent
#: noise floor inside the strictness bound.
AUX_READ = 0.1
D_HEAD = 32  # the largest rank is the duplicate-token head's: 12 names + 16 positions + 1

# --- sizes and channels -----------------------------------------------------------------------
#: (layers, heads per layer) of each size; the circuit (channel 0) keeps circuit.yaml's layer order
SHAPES = {"small": (5, 4), "medium": (6, 8), "large": (12, 12)}
#: which residual block each role writes (a look-alike channel writes its own copy of the block)
WRITES = {"duplicate_token": "dup", "previous_token": "prev", "induction": "dup",
          "s_inhibition": "inhibit", "name_mover": "out", "negative_name_mover": "out",
          "backup_name_mover": "out"}
BLOCK_SIZE = {"dup": 1, "prev": N_NAMES, "inhibit": N_NAMES, "out": N_NAMES}
#: What a look-alike role needs below it in its channel to do its job: each group lists roles of
#: which at least one must be placed (an S-inhibition head works from either duplicate-detection
#: route, a backup gates on a name mover's prediction). Looser than circuit.yaml's edges so that
#: the channels can fill every head of a model whose layer count does not tile whole channels.
NEEDS = {"duplicate_token": (), "previous_token": (), "induction": (("previous_token",),),
         "s_inhibition": (("duplicate_token", "induction"),), "name_mover": (("s_inhibition",),),
         "negative_name_mover": (("s_inhibition",),), "backup_name_mover": (("name_mover",),)}
#: placements tried per seed; the most even mixture of roles among the look-alikes is kept
PLACEMENT_TRIALS = 100


# --- certificate extras (the generic thresholds are in mibench.certificate.THRESHOLDS) ---------
#: IOI accuracy (IO logit > S logit at END) required on clean prompts (the task's own bar).
IOI_ACCURACY = 0.95
#: Backup compensation: the share of the behaviour lost when the name movers alone are ablated,
#: divided by the share lost when the name movers and the backups are ablated together, must be
#: at most this (an ungated backup, simply a second name mover, gives about 0.5).
BACKUP_LOSS_RATIO = 0.3
#: ... and ablating the backups alone (clean run) must move the behaviour by at most this: silent.
BACKUP_SILENT = 0.1
#: Negative name mover: its direct effect on IO − S at END, as a share of the clean logit
#: difference, must be at most this (negative), and ablating it must raise the behaviour by at
#: least NEGATIVE_RAISE (normalized units).
NEGATIVE_DIRECT = -0.1
NEGATIVE_RAISE = 0.1
#: The duplicate-token and induction routes are redundant; ablating a whole route pair (duplicate
#: token + induction, duplicate token + previous token) must leave at most this much behaviour.
ROUTES_LEFT = 0.5
#: ABC corruption: corrupted logit difference / clean logit difference must be at most this.
ABC_RATIO = 0.5


def _token_roles(seed: int) -> tuple[list[int], list[int]]:
    """Which ordinary tokens are names and which are fillers, for one seed."""
    rng = np.random.default_rng([seed, 7])
    ordinary = rng.permutation(np.arange(N_SPECIAL, VOCAB))
    return sorted(int(t) for t in ordinary[:N_NAMES]), sorted(int(t) for t in ordinary[N_NAMES:])


#: the roles in circuit.yaml's layer order, and each role's inputs among them (its edges)
ROLES = sorted(CIRCUIT.roles, key=lambda role: CIRCUIT.roles[role]["layer"])
READS = {role: {src for src, dst, _ in CIRCUIT.edges if dst == role and src in CIRCUIT.roles}
         for role in ROLES}


def _height(role: str) -> int:
    """Layers a whole channel needs above ``role`` (the longest chain of roles reading it)."""
    return max((1 + _height(reader) for reader in ROLES if role in READS[reader]), default=0)


HEIGHT = {role: _height(role) for role in ROLES}


def _sample_channel(free: list[int], rng: np.random.Generator, whole: bool) -> dict[str, int] | None:
    """Layers for one look-alike channel on the free heads (``free[layer]`` of them): every role
    above the roles it reads, layers drawn in proportion to their free heads. ``whole`` asks for
    all seven roles with room above each for its readers; otherwise every role that fits."""
    for _ in range(50):
        left, layers = list(free), {}
        for role in ROLES:
            if not all(any(r in layers for r in group) for group in NEEDS[role]):
                continue
            low = max((layers[r] + 1 for r in READS[role] if r in layers), default=0)
            high = len(free) - 1 - (HEIGHT[role] if whole else 0)
            options = [layer for layer in range(low, high + 1) if left[layer]]
            if not options:
                if whole:
                    break
                continue
            weights = np.array([left[layer] for layer in options], dtype=float)
            layers[role] = int(rng.choice(options, p=weights / weights.sum()))
            left[layers[role]] -= 1
        if len(layers) == len(ROLES) or (layers and not whole):
            return layers
    return None


def _place_channels(n_layers: int, n_heads: int, layer_map: dict[int, int],
                    rng: np.random.Generator) -> list[Channel]:
    """Channel 0 (the circuit) at circuit.yaml's layers mapped by ``layer_map``, then as many whole
    look-alike channels as fit, then partial ones until every head hosts a role. Of
    PLACEMENT_TRIALS complete fillings the one whose look-alike roles are most evenly mixed is kept:
    the audit pools truth against non-truth heads, so a mixture skewed towards some roles would
    let their statistics show. (The toolkit's plan_channels builds partial channels around random
    free slots, keeping every role's inputs: at 5×4 its look-alikes held about four duplicate-token
    heads for every backup.)"""
    best, best_spread, filled = None, None, 0
    for _ in range(20 * PLACEMENT_TRIALS):
        free = [n_heads] * n_layers
        plan = [{role: layer_map[CIRCUIT.roles[role]["layer"]] for role in ROLES}]
        for layer in plan[0].values():
            free[layer] -= 1
        for whole in (True, False):
            while sum(free):
                layers = _sample_channel(free, rng, whole)
                if layers is None:
                    break
                plan.append(layers)
                for layer in layers.values():
                    free[layer] -= 1
        if sum(free):
            continue
        spread = float(np.var([sum(role in layers for layers in plan[1:]) for role in ROLES]))
        if best is None or spread < best_spread:
            best, best_spread = plan, spread
        filled += 1
        if filled == PLACEMENT_TRIALS:
            break
    if best is None:
        raise ValueError(f"no placement of ioi channels fills a {n_layers}×{n_heads} model")
    heads = {layer: [int(h) for h in rng.permutation(n_heads)] for layer in range(n_layers)}
    return [Channel(i, {role: (layer, heads[layer].pop()) for role, layer in layers.items()})
            for i, layers in enumerate(best)]


def _write_head(model: PlantedModel, role: str, layer: int, head: int, ch: Channel,
                name_toks: list[int], rng: np.random.Generator, backup_gate: bool) -> None:
    """One head of ``role`` in channel ``ch``: the role's recipe on the channel's own blocks, its
    attention scores scaled by a SHARPNESS draw and its write by a GAIN draw."""
    layout = model.layout
    sharp, gain = rng.uniform(*SHARPNESS), rng.uniform(*GAIN)
    block = lambda name: rows(layout, ch.block(name))  # noqa: E731
    tok_names = rows(layout, "tok", name_toks)
    one, bos, name = (rows(layout, flag) for flag in ("one", "bos", "name"))
    if role == "duplicate_token":  # same name earlier (not itself), else the BOS sink
        terms = [match_term(layout, "tok", "tok", DUP_QK, name_toks, name_toks),
                 self_exclusion_term(layout, "pos", N_CTX, DUP_QK), QKTerm(one, bos, DUP_SINK)]
        read, write = name, block("dup")
    elif role == "previous_token":  # position p attends to p − 1, copies the name there
        pos = rows(layout, "pos")
        terms = [QKTerm(pos[1:N_CTX], pos[:N_CTX - 1], PREV_QK)]
        read, write = tok_names, block("prev")
    elif role == "induction":  # current name vs the previous-token block (K-composition)
        terms = [QKTerm(tok_names, block("prev"), IND_QK), QKTerm(one, bos, IND_SINK)]
        read, write = one, block("dup")
    elif role == "s_inhibition":  # the position flagged as duplicated, copies its name
        terms = [QKTerm(one, block("dup"), SI_QK), QKTerm(one, bos, SI_SINK)]
        read, write = tok_names, block("inhibit")
    elif role in ("name_mover", "negative_name_mover"):  # names except the inhibited one
        terms = [QKTerm(one, name, NM_NAME), QKTerm(block("inhibit"), tok_names, -NM_INHIBIT)]
        read, write = tok_names, (NM_GAIN if role == "name_mover" else -NEG_GAIN) * block("out")
    else:  # backup: like a name mover, gated by the channel's current prediction of each name
        terms = [QKTerm(one, name, BK_NAME), QKTerm(block("inhibit"), tok_names, -BK_INHIBIT)]
        if backup_gate:
            terms += [QKTerm(block("out"), tok_names, -BK_PREDICT), QKTerm(one, bos, BK_SINK)]
        read, write = tok_names, BK_GAIN * block("out")
    set_qk_terms(model, layer, head, [QKTerm(t.query, t.key, sharp * t.strength) for t in terms])
    model.set_ov(layer, head, read, write, gain=gain)


class IOI(Case):
    name = "ioi"
    version = "3"
    sizes = ("small", "medium", "large")
    circuit = CIRCUIT
    tier = "planted"
    description = ("duplicate-token/induction → S-inhibition → name movers (plus negative and "
                   "gated backup name movers) predict the indirect object")
    necessity_exempt = {
        "duplicate_token": "redundant with the previous-token + induction route; checked by "
                           "ablating both routes together",
        "previous_token": "its route is redundant with the duplicate-token head; checked with it",
        "induction": "redundant with the duplicate-token head; checked by ablating both routes",
        "name_mover": "the backup name mover compensates when it is ablated; checked by the "
                      "backup compensation check",
        "negative_name_mover": "ablating it raises the metric by design; checked by its "
                               "negative direct effect",
        "backup_name_mover": "silent while the name mover works; checked by compensation",
    }

    # --- model ---------------------------------------------------------------------------------

    def build(self, seed: int, size: str = DEFAULT_SIZE, *, backup_gate: bool = True) -> Instance:
        """The planted model for ``seed`` at ``size``; ``backup_gate=False`` removes the backups'
        gate (their prediction term and BOS sink) to show that the compensation check depends on it."""
        self.check_size(size)
        rng = np.random.default_rng([seed, 0])
        name_toks, _ = _token_roles(seed)
        n_layers, n_heads = SHAPES[size]
        # the circuit's own layers are drawn too (in order), so "it sits in the first layers" is
        # no give-away in a deeper model
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        channels = _place_channels(n_layers, n_heads, layer_map, rng)
        blocks = {ch.block(WRITES[role]): BLOCK_SIZE[WRITES[role]] for ch in channels for role in ch.slots}
        layout = ResidualLayout({"tok": VOCAB, "one": 1, "bos": 1, "name": 1, "pos": N_CTX, **blocks})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD, d_vocab=VOCAB,
                             n_ctx=N_CTX)
        model.embed_tokens("tok")
        embed_flag(model, "bos", [BOS])
        embed_flag(model, "one", [t for t in range(VOCAB) if t != BOS])
        embed_flag(model, "name", name_toks)
        model.embed_positions("pos")
        for ch in channels:
            for role, (layer, head) in ch.slots.items():
                _write_head(model, role, layer, head, ch, name_toks, rng, backup_gate)
            # the circuit's name movers write the task's logits; every other channel's outputs
            # that nothing in the channel reads go to other tokens' logits (see AUX_READ)
            if ch.is_circuit:
                model.unembed("out", name_toks)
            else:
                for block in sorted({ch.block(WRITES[role]) for role in ch.sinks(CIRCUIT)}):
                    shuffled_readout(model, block, rng, AUX_READ)
        model.rotate(rng)
        truth = CIRCUIT.truth({role: [names.head(*slot)] for role, slot in channels[0].slots.items()},
                              layer_map=layer_map, n_layers=n_layers)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    # --- prompts -------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """IOI prompts from the frames above in both orders (ABBA and BABA); corrupted prompts are
        the paper's ABC distribution (S2 replaced by a third name)."""
        rng = prompt_rng(seed, split, sample)
        name_toks, filler_toks = _token_roles(seed)
        special = {"BOS": BOS, "and": AND, ",": COMMA, "END": TO}
        clean, corrupted, io, s = [], [], [], []
        labels = {k: [] for k in ("BOS", "IO", "S1", "S1+1", "S2", "END")}
        order = []
        for i in range(n):
            frame = FRAMES[int(rng.integers(len(FRAMES)))]
            baba = bool(i % 2)
            io_tok, s_tok, c_tok = (int(t) for t in rng.choice(name_toks, size=3, replace=False))
            a, b = (s_tok, io_tok) if baba else (io_tok, s_tok)
            seq, cor = [], []
            for p, slot in enumerate(frame):
                if slot in special:
                    tok = special[slot]
                elif slot == "f":
                    tok = int(rng.choice(filler_toks))
                else:
                    tok = {"A": a, "B": b, "S2": s_tok}[slot]
                seq.append(tok)
                cor.append(c_tok if slot == "S2" else tok)
            ia, ib = frame.index("A"), frame.index("B")
            s1 = ia if baba else ib
            labels["BOS"].append(0)
            labels["IO"].append(ib if baba else ia)
            labels["S1"].append(s1)
            labels["S1+1"].append(s1 + 1)
            labels["S2"].append(frame.index("S2"))
            labels["END"].append(SEQ - 1)
            clean.append(seq)
            corrupted.append(cor)
            io.append(io_tok)
            s.append(s_tok)
            order.append(int(baba))
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(io), wrong=torch.tensor(s),
            positions={k: torch.tensor(v) for k, v in labels.items()},
            variables={"IO": torch.tensor(io), "S": torch.tensor(s), "baba": torch.tensor(order)},
            split=split)

    # --- certificate extras ------------------------------------------------------------------

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        truth = instance.truth
        by_role: dict[str, list[str]] = {}
        for node, role in truth.nodes.items():
            by_role.setdefault(role, []).append(node)
        norm = lambda removed: probe.normalized(probe.metric_without(removed))  # noqa: E731
        checks = [Check("ioi accuracy", probe.metric.accuracy(probe.clean_logits), IOI_ACCURACY,
                        ">=", "IO logit > S logit at END on clean prompts")]

        movers, backups = by_role["name_mover"], by_role["backup_name_mover"]
        lost_nm = 1.0 - norm(movers)
        lost_both = 1.0 - norm(movers + backups)
        ratio = lost_nm / lost_both if lost_both > 1e-9 else float("nan")
        checks.append(Check("backup compensation", ratio, BACKUP_LOSS_RATIO, "<=",
                            f"loss ablating name movers alone ({lost_nm:.3f}) / with the backups "
                            f"({lost_both:.3f})"))
        checks.append(Check("backup silent", abs(1.0 - norm(backups)), BACKUP_SILENT, "<=",
                            "move when only the backups are ablated (clean run)"))

        neg = by_role["negative_name_mover"]
        direct = sum(direct_effects(instance.model, prompts.clean,
                                    lambda logits: metric_gradient(probe.metric, logits), neg).values())
        checks.append(Check("negative direct effect", direct / probe.full, NEGATIVE_DIRECT, "<=",
                            "negative name mover's direct effect on IO − S at END (DLA) / clean IO − S"))
        checks.append(Check("negative ablation raises", norm(neg) - 1.0, NEGATIVE_RAISE, ">=",
                            "behaviour gained when the negative name mover is ablated"))

        dup, prev, ind = by_role["duplicate_token"], by_role["previous_token"], by_role["induction"]
        checks.append(Check("routes: duplicate + induction", norm(dup + ind), ROUTES_LEFT, "<=",
                            "behaviour left with both duplicate-detection routes ablated"))
        checks.append(Check("routes: duplicate + previous", norm(dup + prev), ROUTES_LEFT, "<=",
                            "behaviour left with the duplicate head and the induction route's "
                            "previous-token head ablated"))

        with torch.no_grad():
            corrupted = probe.metric(instance.model(prompts.corrupted))
        checks.append(Check("ABC corruption", float(corrupted) / probe.full, ABC_RATIO, "<=",
                            "corrupted (ABC) logit difference / clean logit difference"))
        return checks
