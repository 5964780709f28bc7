"""Copy suppression: a planted 2-layer attention-only model (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, Truth, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import attention_patterns
from mibench.model.weights import head_write, logit_writes
from mibench.models import PlantedModel, ResidualLayout
from mibench.models.channels import plan_channels, random_layer_map
from mibench.models.planted import random_orthogonal

BOS, END = 0, 1
VOCAB = 48  # 0 = BOS, 1 = END; of 2..47, N_CANDIDATES are candidates (copyable), the rest fillers
N_CANDIDATES = 16
CONTEXT = 10  # tokens between BOS and END; exactly one of them is a candidate
D_HEAD = 17  # the suppressor's QK needs rank 17: the 16 candidates and the BOS sink
#: (layers, heads) per size; the circuit sits at two drawn layers (0 and 1 at small), every other
#: head hosts a channel
SHAPES = {"small": (2, 4), "medium": (6, 8)}
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Every role of every channel is built by the same recipe, its strengths drawn from the same ranges,
# so nothing task-agnostic tells the circuit's heads from the others (README.md: the model runs
# many copy-suppression channels at once; the task reads only channel 0).
#: the copier's write on the copied token D and on its related token rel(D), in logits: without
#: suppression D wins by about 2
COPY_RANGE, RELATED_RANGE = (5.5, 6.5), (3.5, 4.5)
#: the suppressor's negative write on the token it attends to; about the norm of the copier's
#: write (sqrt(6² + 4²) ≈ 7.2) so that both roles' OV circuits have the same size
SUPPRESS_RANGE = (6.5, 8.0)
#: attention score per unit of query × key: the copier's key reads the candidate feature (embedded
#: at CAND_SCALE) and the suppressor's query reads the predicted logit (≈ the copy gain), so both
#: score ≈ 12 on the token they look for: all attention on it
QK_RANGE = (1.7, 2.3)
CAND_SCALE = 6.0
#: both roles' END → BOS sink, where END's attention goes when there is nothing to copy or suppress
SINK_RANGE = (3.0, 5.0)
#: how strongly the unembedding reads another channel's predictions (through its own random rotation
#: of the candidates' logits): each moves every candidate's logit by a fraction of a logit, so the
#: task's metric moves by about 1% of its clean value (the noise floor, README.md)
AUX_READ = 0.06

# Thresholds of the case's own checks.
#: the suppressor must write at most this much (a negative logit) on the copied token at END
SUPPRESSION_WRITE_MAX = -1.0
#: its direct effect on the metric, as a fraction of the clean metric, must be at least this
SUPPRESSION_DIRECT_MIN = 0.5
#: share of END's attention (of the suppressor) that lands on the copied token's position
SUPPRESSION_ATTENTION_MIN = 0.5


class CopySuppression(Case):
    name = "copy_suppression"
    version = "2"
    circuit = CIRCUIT
    sizes = tuple(SHAPES)
    tier = "planted"
    description = ("a copier boosts a context token; a later copy-suppression head attends to "
                   "the predicted token's earlier occurrence and writes its negative unembedding; "
                   "every other head belongs to a look-alike copy-suppression channel")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int, size: str = DEFAULT_SIZE) -> tuple[PlantedModel, Truth]:
        """The planted weights (before export) and the truth; ``build`` exports them. Tests edit
        the weights here to remove a mechanism."""
        self.check_size(size)
        n_layers, n_heads = SHAPES[size]
        rng = np.random.default_rng([seed, 0])
        candidates, related = self._token_roles(seed)
        # the circuit at random ordered layers, so that its depth gives nothing away
        layer_map = random_layer_map(CIRCUIT, n_layers, rng)
        channels = plan_channels(CIRCUIT, n_layers, n_heads, rng, layer_map=layer_map)
        # each channel predicts into its own block, indexed by candidate (its i-th direction is
        # candidate i); channel 0's block is the task's readout
        outs = [ch.block("out") for ch in channels]
        layout = ResidualLayout({"tok": VOCAB, "cand": N_CANDIDATES, **{o: N_CANDIDATES for o in outs}})
        model = PlantedModel(layout, n_layers=n_layers, n_heads=n_heads, d_head=D_HEAD,
                             d_vocab=VOCAB, n_ctx=CONTEXT + 2)
        model.embed_tokens("tok")
        # candidate i marks its own "cand" direction, shared by every channel's copier
        model.embed_tokens("cand", candidates.tolist(), scale=CAND_SCALE)
        model.unembed("out", candidates.tolist())
        for out in outs[1:]:
            # every other channel's predictions reach the candidates' logits through its own random
            # rotation of them: each moves every candidate's logit a little
            model.unembed(out, candidates.tolist(), scale=AUX_READ, mixing=random_orthogonal(N_CANDIDATES, rng))

        tok = layout.basis("tok")
        index = {int(t): i for i, t in enumerate(candidates)}
        for channel, out in zip(channels, outs):
            # channel 0 relates each candidate to the task's answer; the others to their own
            # random relative (a cycle over the candidates: no candidate is its own relative)
            if channel.is_circuit:
                rel = [index[int(t)] for t in related]
            else:
                order = rng.permutation(N_CANDIDATES)
                rel = [0] * N_CANDIDATES
                for a, b in zip(order, np.roll(order, 1)):
                    rel[a] = int(b)
            predict = layout.basis(out)
            if "copier" in channel.slots:
                # from END, attend to the candidate in context (BOS is the sink when there is none);
                # copy it strongly and its related token weakly into the channel's predictions
                layer, head = channel.slots["copier"]
                model.set_qk(layer, head, tok[[END] * N_CANDIDATES], layout.basis("cand"),
                             rng.uniform(*QK_RANGE))
                model.set_qk(layer, head, tok[[END]], tok[[BOS]], rng.uniform(*SINK_RANGE),
                             offset=N_CANDIDATES)
                model.set_ov(layer, head, tok[candidates],
                             rng.uniform(*COPY_RANGE) * predict + rng.uniform(*RELATED_RANGE) * predict[rel])
            if "copy_suppression" in channel.slots:
                # the query reads what the channel predicts, the key token identity, so END attends
                # to earlier occurrences of the predicted token; the value writes the negative of
                # the attended token's prediction
                layer, head = channel.slots["copy_suppression"]
                model.set_qk(layer, head, predict, tok[candidates], rng.uniform(*QK_RANGE))
                model.set_qk(layer, head, tok[[END]], tok[[BOS]], rng.uniform(*SINK_RANGE),
                             offset=N_CANDIDATES)
                model.set_ov(layer, head, tok[candidates], -predict, rng.uniform(*SUPPRESS_RANGE))
        model.rotate(rng)
        placement = {role: [names.head(*slot)] for role, slot in channels[0].slots.items()}
        return model, CIRCUIT.truth(placement, layer_map=layer_map, n_layers=n_layers)

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        model, truth = self.planted(seed, size)
        return Instance(model=model.to_bridge(), truth=truth, seed=seed, size=size)

    @staticmethod
    def _token_roles(seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Which tokens are candidates, and each candidate's related token (``related[i]`` belongs
        to ``candidates[i]``: a cycle over the candidates, so no candidate is its own relative)."""
        rng = np.random.default_rng([seed, 2])
        candidates = rng.permutation(np.arange(2, VOCAB))[:N_CANDIDATES]
        return candidates, np.roll(candidates, 1)

    # --- prompts ------------------------------------------------------------------------------

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """BOS, CONTEXT tokens (fillers and one candidate D at a random place), END. The answer is
        D's related token A (never in the context), the wrong token is D itself. Corrupted prompts
        replace D by a filler that is not in the prompt, so there is nothing to copy or suppress."""
        candidates, related = self._token_roles(seed)
        relative = dict(zip(candidates.tolist(), related.tolist()))
        fillers = np.setdiff1d(np.arange(2, VOCAB), candidates)
        rng = prompt_rng(seed, split, sample)
        clean, corrupted, answer, wrong, where = [], [], [], [], []
        for _ in range(n):
            picked = rng.permutation(fillers)
            ctx, spare = picked[:CONTEXT].copy(), picked[CONTEXT]
            d = int(rng.choice(candidates))
            at = int(rng.integers(0, CONTEXT))
            corrupt = ctx.copy()
            ctx[at], corrupt[at] = d, spare
            clean.append([BOS, *ctx, END])
            corrupted.append([BOS, *corrupt, END])
            answer.append(relative[d])
            wrong.append(d)
            where.append(at + 1)
        return PromptSet(
            clean=torch.tensor(clean), corrupted=torch.tensor(corrupted),
            answer=torch.tensor(answer), wrong=torch.tensor(wrong),
            positions={"BOS": torch.zeros(n, dtype=torch.long), "D": torch.tensor(where),
                       "END": torch.full((n,), CONTEXT + 1)},
            variables={"copied": torch.tensor(wrong)}, split=split)

    # --- checks -------------------------------------------------------------------------------

    def extra_checks(self, instance: Instance, prompts: PromptSet, probe) -> list[Check]:
        """The suppressor's own signature: it attends to the copied token, writes a negative logit
        on it, and that write is what raises the metric (positive direct effect)."""
        model = instance.model
        (node,) = [n for n, r in instance.truth.nodes.items() if r == "copy_suppression"]
        parsed = names.parse_node(node)
        idx = torch.arange(len(prompts))
        with torch.no_grad():
            # [n, vocab]: its write at END, read straight through the unembedding
            written = logit_writes(model, head_write(model, node, probe.clean_cache[node][:, -1]))
            on_copied = written[idx, prompts.wrong]
            direct = written[idx, prompts.answer] - on_copied
            pattern = attention_patterns(model, prompts.clean, [parsed.layer])[parsed.layer][:, parsed.index, -1]
            attention = pattern[idx, prompts.positions["D"]]
        return [
            Check(f"suppression attention {node}", float(attention.mean()),
                  SUPPRESSION_ATTENTION_MIN, ">=",
                  "copy_suppression: END's attention on the copied token's position"),
            Check(f"suppression write {node}", float(on_copied.mean()), SUPPRESSION_WRITE_MAX, "<=",
                  "copy_suppression: its direct write on the copied token's logit at END"),
            Check(f"suppression direct effect {node}", float(direct.mean()) / probe.full,
                  SUPPRESSION_DIRECT_MIN, ">=",
                  "copy_suppression: its direct effect on the metric / clean metric"),
        ]
