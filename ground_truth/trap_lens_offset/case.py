"""Trap: a constant residual offset that only the final block removes, hiding the answer from the
logit lens at every intermediate layer, among look-alike channels that do the same at other
positions (see README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, Truth, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.readout import cache_residuals, decode
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import QueryHead, readout_blocks, shuffled_readout
from mibench.models.gating import QKTerm, embed_flag, set_qk_terms
from mibench.models.norms import embed_offset, ln_coordinate

BOS, END = 0, 1
#: marker tokens M1 … M8 sit between the context and END, in this order, in every prompt: the
#: query positions of the look-alike channels (END is the circuit's)
N_MARKERS = 8
MARKERS = list(range(2, 2 + N_MARKERS))
N_KEYS = 8
N_NONSENSE = 3  # tokens whose unembedding each offset points at
N_FILLERS = 14
VOCAB = 2 + N_MARKERS + N_KEYS + N_FILLERS
CONTEXT = 8  # tokens between BOS and the markers
N_CTX = 1 + CONTEXT + N_MARKERS + 1
D_HEAD = 8
#: layers × heads per size
SHAPES = {"small": (4, 3), "medium": (6, 8)}
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Every head is one of two recipes, whichever channel it belongs to, with strengths drawn from the
# same ranges (see README.md, "Distractors"). Scores and writes are stated in post-LayerNorm terms
# and converted into weights from the model's width, so they mean the same at every size.
#: each query token's (END's, every marker's) constant offset: this much along a direction of its
#: own, orthogonal to the unembedding …
OFFSET_RANGE = (13.0, 17.0)
#: … and this much along each of N_NONSENSE tokens' unembedding directions
NONSENSE_RANGE = (7.0, 9.0)
#: the attention sink's own offset (BOS's), orthogonal to everything a head reads or the
#: unembedding reads
SINK_RANGE = (36.0, 44.0)
#: attention score on the key from the head's own query position …
KEY_SCORE_RANGE = (38.0, 44.0)
#: … and on BOS from every position where an offset dominates the residual (the sink; its query
#: reads the shared `const` direction, so it is stronger everywhere else). Strong enough that the
#: attention a head leaks at other heads' query positions (whose residual grows as movers write
#: there) stays far below what it leaks at its own: otherwise heads of later layers attend less
#: sharply, and the fingerprint audit tells L0's circuit head apart
SINK_SCORE_RANGE = (28.0, 32.0)
#: a mover's write: this many residual units of the key's identity (small next to an offset, so
#: that a query position's LayerNorm scale barely depends on how many movers wrote there before)
MOVE_RANGE = (1.5, 2.5)
#: how strongly the unembedding reads a look-alike mover's copy (each block into its own shuffle
#: of the vocabulary): it moves other tokens' logits, and the task's metric only when the shuffle
#: sends a key onto the answer or the wrong key (a small noise floor)
AUX_READ = 0.1
#: share of the non-circuit heads that are look-alike offset removers (besides the circuit
#: channel's own, in the final layer). The circuit is one mover, so removers, whose norms and
#: ranks differ from a mover's, must stay a small minority for the audit; enough of them make
#: removing an offset a habit of the model rather than a one-off of the circuit's channel
REMOVER_SHARE = 0.1
#: look-alike movers that query END (besides the circuit's): their writes reach the task's logits
#: only through their shuffles, a small noise floor
N_END_MOVERS = 2

# Thresholds of the trap's own checks.
#: top-1 accuracy of the logit lens after the answer layer, at most chance (1 / N_KEYS) plus this
LENS_MARGIN = 0.1
#: top-1 accuracy of a least-squares linear readout (residual after the answer layer -> final logits)
READOUT_ACCURACY_MIN = 0.9
#: train prompts for that readout (more than d_model at every size, so the fit is determined)
N_READOUT_TRAIN = 256


def plan(n_layers: int, n_heads: int, layer: int, rng: np.random.Generator) -> list[QueryHead]:
    """Every head's recipe and query position. The circuit's channel: a mover in ``layer`` and an
    offset remover in the final layer, both at END. The other heads: look-alike removers above L0
    (REMOVER_SHARE of them), each with a marker of its own whose offset it removes, and movers:
    N_END_MOVERS of them query END (from ``layer`` on), one joins each remover's marker at the same
    layer or below, the rest join a random marker they can still read or one of their own (whose
    offset stays). A head reads its query position before the offset there is removed, so that
    every head attends as sharply as the circuit's."""
    slots = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    mover0, remover0 = (layer, int(rng.integers(n_heads))), (n_layers - 1, int(rng.integers(n_heads)))
    others = [s for s in slots if s not in (mover0, remover0)]
    upper = [s for s in others if s[0] >= 1]
    n_remove = min(int(REMOVER_SHARE * len(others)), N_MARKERS, len(upper))
    removers = sorted(upper[i] for i in rng.choice(len(upper), size=n_remove, replace=False))
    order = [others[i] for i in rng.permutation(len(others)) if others[i] not in removers]
    markers = [int(m) for m in rng.permutation(MARKERS)]
    heads = [QueryHead(*mover0, "mover", END), QueryHead(*remover0, "remover", END)]

    def take(low: int, top: int) -> tuple[int, int] | None:
        """A mover not yet placed whose layer is in ``low`` … ``top``."""
        slot = next((s for s in order if low <= s[0] <= top), None)
        if slot is not None:
            order.remove(slot)
        return slot

    # END's look-alikes copy the key no earlier than the circuit's mover: the answer becomes
    # linearly decodable at END (what the tuned lens finds) in the circuit's layer, not before
    for _ in range(N_END_MOVERS):
        slot = take(layer, n_layers)
        if slot is not None:
            heads.append(QueryHead(*slot, "mover", END))
    readable = {}  # marker -> the last layer that still sees its offset
    for slot in removers:
        partner = take(0, slot[0])
        if partner is None:  # nothing left to join it at this layer: the head is a mover instead
            order.append(slot)
            continue
        marker = markers.pop()
        readable[marker] = slot[0]
        heads += [QueryHead(*slot, "remover", marker), QueryHead(*partner, "mover", marker)]
    for slot in order:
        fits = [m for m, top in readable.items() if slot[0] <= top]
        if markers and (not fits or rng.random() < 0.3):
            fits = [markers.pop()]
            readable[fits[0]] = n_layers
        heads.append(QueryHead(*slot, "mover", int(fits[int(rng.integers(len(fits)))])))
    return readout_blocks(heads)


class TrapLensOffset(Case):
    name = "trap_lens_offset"
    version = "2"
    circuit = CIRCUIT
    tier = "trap"
    sizes = ("small", "medium")
    failure_mode = "an odd residual basis (lens offset)"
    description = ("the answer is formed in a drawn layer before the last, but a constant offset "
                   "removed only by the final block hides it from the logit lens, which credits the "
                   "final layer; every other head is a look-alike mover or offset remover at another "
                   "query position")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int, offset_scale: float = 1.0, size: str = DEFAULT_SIZE
                ) -> tuple[PlantedModel, Truth]:
        """The planted weights (rotated, before export) and the truth. ``offset_scale`` = 0
        removes END's offset (the mechanism), for tests. The mover's layer is drawn, so that its
        depth gives nothing away, from all but the final layer (the block that removes the offset
        must come after the answer, or the logit lens would credit the right layer); the truth's
        answer layer moves with it."""
        self.check_size(size)
        n_layers, n_heads = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        roles = self._token_roles(seed)
        keys = roles["key"]
        layer_map = {0: int(rng.integers(n_layers - 1))}
        heads = plan(n_layers, n_heads, layer_map[0], rng)
        queries = [END, *MARKERS]
        readouts = sorted({h.readout for h in heads if h.recipe == "mover"} - {"out"})
        layout = ResidualLayout({"tok": VOCAB, "const": 1, "flag": 1, "query": len(queries),
                                 "offset": 2 * len(queries), "sink": 2, "out": VOCAB, "pos": N_CTX,
                                 **{block: N_KEYS for block in readouts}})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=N_CTX, layer_norm=True)
        model.embed_tokens("tok")
        embed_flag(model, "const", list(range(VOCAB)))
        embed_flag(model, "flag", keys)  # one shared "is a key" direction
        model.embed_positions("pos")
        b = layout.basis
        # each query token has a flag of its own, which its heads query, and a constant offset: a
        # direction of its own (a difference of two coordinates, orthogonal to the all-ones
        # direction, so no LayerNorm's mean subtraction spreads it onto other features) and a
        # part along N_NONSENSE tokens' unembedding; END's nonsense tokens are fillers
        pairs = b("offset").reshape(len(queries), 2, -1)
        offsets = {}
        fillers = [t for t in range(2 + N_MARKERS, VOCAB) if t not in keys]
        for i, q in enumerate(queries):
            nonsense = roles["nonsense"] if q == END else rng.choice(fillers, N_NONSENSE, replace=False)
            offsets[q] = rng.uniform(*OFFSET_RANGE) * (pairs[i, 0] - pairs[i, 1]) / np.sqrt(2)
            offsets[q] += rng.uniform(*NONSENSE_RANGE) * b("out")[list(nonsense)].sum(0)
        carried = {q: (offset_scale if q == END else 1.0) * offsets[q] for q in queries}
        query_flag = {q: b("query")[i] for i, q in enumerate(queries)}
        for q in queries:
            embed_offset(model, query_flag[q] + carried[q], [q])
        # BOS, where every head rests, carries a large offset of its own (the "massive activation"
        # of an attention sink): the heads' small writes while resting there barely change its
        # LayerNorm, so a head's rest write is the same at every depth
        sink = (b("sink")[0] - b("sink")[1]) / np.sqrt(2)
        carried[BOS] = rng.uniform(*SINK_RANGE) * sink
        embed_offset(model, carried[BOS], [BOS])
        model.unembed("out")
        for block in readouts:
            shuffled_readout(model, block, rng, AUX_READ)

        # what each head sees through its LayerNorm: at a key and at BOS the embedding (no head
        # writes there); at its query position the embedding plus the copies written there by the
        # movers of earlier layers (they lower the LayerNorm's scale a little), so that every head,
        # at any depth, gets the scores and the write drawn for it
        def embedding(token: int, position: int) -> np.ndarray:
            """What the embeddings written above put at ``position`` when ``token`` is there."""
            x = b("tok")[token] + b("const")[0] + b("pos")[position] + carried.get(token, 0)
            return x + (b("flag")[0] if token in keys else 0) + (query_flag[token] if token in query_flag else 0)

        key_x, bos_x = embedding(keys[0], 1), embedding(BOS, 0)
        flag_at_key = ln_coordinate(key_x, b("flag")[0])
        tok_at_key = ln_coordinate(key_x, b("tok")[keys[0]])
        sink_at_bos = ln_coordinate(bos_x, sink)
        drawn = {h: (rng.uniform(*KEY_SCORE_RANGE), rng.uniform(*SINK_SCORE_RANGE), rng.uniform(*MOVE_RANGE))
                 for h in heads}
        written = {q: embedding(q, N_CTX - 1 if q == END else 1 + CONTEXT + MARKERS.index(q)) for q in queries}
        for layer in range(n_layers):
            copies = []
            for head in (h for h in heads if h.layer == layer):
                key_score, sink_score, move = drawn[head]
                q_x = written[head.query]
                set_qk_terms(model, head.layer, head.index, [
                    QKTerm(query_flag[head.query][None], b("flag"),
                           key_score / (ln_coordinate(q_x, query_flag[head.query]) * flag_at_key)),
                    QKTerm(b("const"), sink[None], sink_score / (ln_coordinate(q_x, b("const")[0]) * sink_at_bos))])
                if head.recipe == "mover":
                    # the task's readout (the key's own logit) or the key's identity in a block of
                    # its own, read into a shuffle of tokens
                    write = b("out")[keys] if head.readout == "out" else b(head.readout)
                    model.set_ov(head.layer, head.index, b("tok")[keys], write, move / tok_at_key)
                    copies.append((head.query, move * write[0]))
                else:  # attending to the key (weight 1 - e^-6 or more), it removes the query's offset
                    size = np.linalg.norm(carried[head.query])
                    direction = offsets[head.query] / np.linalg.norm(offsets[head.query])
                    model.set_ov(head.layer, head.index, b("flag"), -direction[None], size / flag_at_key)
            for query, copy in copies:
                written[query] = written[query] + copy
        model.rotate(rng)
        return model, CIRCUIT.truth({"answer_mover": [heads[0].node]}, layer_map=layer_map, n_layers=n_layers)

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        model, truth = self.planted(seed, size=size)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    @staticmethod
    def _token_roles(seed: int) -> dict:
        rng = np.random.default_rng([seed, 2])
        toks = rng.permutation(np.arange(2 + N_MARKERS, VOCAB)).tolist()
        fillers = toks[N_KEYS:]
        return {"key": toks[:N_KEYS], "filler": fillers, "nonsense": fillers[:N_NONSENSE]}

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one key at a random place), the markers M1 … M8, END.
        Answer: the key; wrong: another key, which the corrupted prompt holds in the key's place."""
        roles = self._token_roles(seed)
        keys, fillers = roles["key"], np.array(roles["filler"])
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, wrong, where = [], [], [], [], []
        for _ in range(n):
            ctx = rng.permutation(fillers)[:CONTEXT]
            i, j = rng.choice(N_KEYS, size=2, replace=False)
            at = int(rng.integers(0, CONTEXT))
            c, x = ctx.copy(), ctx.copy()
            c[at], x[at] = keys[i], keys[j]
            clean.append([BOS, *c, *MARKERS, END])
            corrupted.append([BOS, *x, *MARKERS, END])
            answer.append(keys[i])
            wrong.append(keys[j])
            where.append(at + 1)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.tensor(wrong),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "KEY": torch.tensor(where),
                       "END": torch.full((n,), N_CTX - 1)},
            variables={"key": torch.tensor([keys.index(int(a)) for a in answer])}, split=split)

    # --- checks -------------------------------------------------------------------------------

    @staticmethod
    def _end_residual(model, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Final logits at END and the residual after block ``layer`` at END."""
        logits, residuals = cache_residuals(model, tokens)  # residuals[l + 1] follows block l
        return logits[:, -1], residuals[layer + 1][:, -1]

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The mechanism: right after the answer layer the logit lens (final norm + unembedding on
        the residual) names the wrong token, while a linear readout of the same residual fitted to the
        final logits recovers the answer."""
        model, seed = instance.model, instance.seed
        layer = instance.truth.answer_layer
        _, resid = self._end_residual(model, prompts.clean, layer)
        with torch.no_grad():
            lens = decode(model, resid)
        lens_acc = float((lens.argmax(-1) == prompts.answer).float().mean())

        train = self.prompts(N_READOUT_TRAIN, seed, "train")
        train_logits, train_resid = self._end_residual(model, train.clean, layer)
        x = np.hstack([train_resid.double().numpy(), np.ones((len(train), 1))])
        w, *_ = np.linalg.lstsq(x, train_logits.double().numpy(), rcond=None)
        x_test = np.hstack([resid.double().numpy(), np.ones((len(prompts), 1))])
        readout = x_test @ w
        readout_acc = float((readout.argmax(-1) == prompts.answer.numpy()).mean())
        return [
            Check("logit lens accuracy at the answer layer", lens_acc, 1.0 / N_KEYS + LENS_MARGIN, "<=",
                  f"top-1 accuracy of decoding the residual after L{layer} at END through the final "
                  f"norm and unembedding (chance 1/{N_KEYS})"),
            Check("linear readout accuracy at the answer layer", readout_acc, READOUT_ACCURACY_MIN, ">=",
                  f"top-1 accuracy of a least-squares map (fitted on {N_READOUT_TRAIN} train prompts) "
                  f"from the residual after L{layer} at END to the final logits"),
        ]
