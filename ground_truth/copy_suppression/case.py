"""Copy suppression: a planted 2-layer attention-only model (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mibench import names
from mibench.api import DEFAULT_SIZE, Case, Instance, PromptSet, prompt_rng
from mibench.certificate import Check
from mibench.circuit import Circuit
from mibench.model.ablation import attention_patterns
from mibench.model.weights import head_write, logit_writes
from mibench.models import PlantedModel, ResidualLayout

BOS, END = 0, 1
VOCAB = 48  # 0 = BOS, 1 = END; of 2..47, N_CANDIDATES are candidates (copyable), the rest fillers
N_CANDIDATES = 16
CONTEXT = 10  # tokens between BOS and END; exactly one of them is a candidate
N_HEADS = 4
D_HEAD = 56
CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))

# Planted strengths (logits). The copier writes COPY_GAIN on the copied token D and RELATED_GAIN on
# its related token A (the answer, which is not in the context); the suppressor writes
# −SUPPRESS_GAIN on D. Without suppression D wins by COPY_GAIN − RELATED_GAIN; with it A wins.
COPY_GAIN, RELATED_GAIN, SUPPRESS_GAIN = 6.0, 4.0, 5.0
COPIER_QK, SUPPRESS_QK, SINK_QK = 12.0, 2.0, 4.0  # SUPPRESS_QK multiplies the predicted logit

# Thresholds of the case's own checks.
#: the suppressor must write at most this much (a negative logit) on the copied token at END
SUPPRESSION_WRITE_MAX = -1.0
#: its direct effect on the metric, as a fraction of the clean metric, must be at least this
SUPPRESSION_DIRECT_MIN = 0.5
#: share of END's attention (of the suppressor) that lands on the copied token's position
SUPPRESSION_ATTENTION_MIN = 0.5


class CopySuppression(Case):
    name = "copy_suppression"
    version = "1"
    circuit = CIRCUIT
    tier = "planted"
    description = ("a copier (L0) boosts a context token; a copy-suppression head (L1) attends to "
                   "the predicted token's earlier occurrence and writes its negative unembedding")

    # --- model --------------------------------------------------------------------------------

    def planted(self, seed: int) -> tuple[PlantedModel, dict[str, list[str]]]:
        """The planted weights (before export) and where each role sits; ``build`` exports them.
        Tests edit the weights here to remove a mechanism."""
        rng = np.random.default_rng([seed, 0])
        candidates, related = self._token_roles(seed)
        n_ctx = CONTEXT + 2
        layout = ResidualLayout({"tok": VOCAB, "cand": N_CANDIDATES, "out": VOCAB, "pos": n_ctx, "junk": 16})
        model = PlantedModel(layout, n_layers=2, n_heads=N_HEADS, d_head=D_HEAD, d_vocab=VOCAB,
                             n_ctx=n_ctx)
        model.embed_tokens("tok")
        model.embed_tokens("cand", candidates.tolist())  # candidate i marks its own "cand" direction
        model.embed_positions("pos")
        model.unembed("out")

        copier, suppressor = (int(h) for h in rng.integers(0, N_HEADS, size=2))
        tok, out = layout.basis("tok"), layout.basis("out")
        # copier: from END, attend to the candidate in context (BOS is the sink when there is none);
        # copy it strongly and its related token weakly into the unembedding subspace
        model.set_qk(0, copier, tok[[END] * N_CANDIDATES], layout.basis("cand"), COPIER_QK)
        model.set_qk(0, copier, tok[[END]], tok[[BOS]], SINK_QK, offset=N_CANDIDATES)
        model.set_ov(0, copier, tok[candidates],
                     COPY_GAIN * out[candidates] + RELATED_GAIN * out[related])
        # copy suppression: the query reads what the residual stream predicts (the unembedding
        # subspace), the key reads token identity, so END attends to earlier occurrences of the
        # predicted token; the value writes the negative of the attended token's unembedding
        model.set_qk(1, suppressor, out, tok, SUPPRESS_QK)
        model.set_qk(1, suppressor, tok[[END]], tok[[BOS]], SINK_QK, offset=VOCAB)
        model.set_ov(1, suppressor, tok[2:], -out[2:], SUPPRESS_GAIN)

        for h in range(N_HEADS):
            if h != copier:
                model.add_distractor_head(0, h, rng, read_blocks=["tok", "pos"],
                                          write={"junk": 1.0, "out": 0.3})
            if h != suppressor:
                model.add_distractor_head(1, h, rng, read_blocks=["tok", "pos", "junk"],
                                          write={"junk": 1.0, "out": 0.3})
        model.rotate(rng)
        return model, {"copier": [names.head(0, copier)],
                       "copy_suppression": [names.head(1, suppressor)]}

    def build(self, seed: int, size: str = DEFAULT_SIZE) -> Instance:
        self.check_size(size)
        model, placement = self.planted(seed)
        return Instance(model=model.to_bridge(), truth=CIRCUIT.truth(placement), seed=seed, size=size)

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
