"""Copy suppression in GPT-2 small: McDougall et al. 2023's L10H7 and L11H10 on IOI prompts, on the
user's own weights (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

from mibench.api import PromptSet
from mibench.circuit import Circuit
from mibench.literature import LiteratureCase

from ground_truth.gpt2_ioi.dataset import build_ioi_dataset, to_prompt_set

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))


class GPT2CopySuppression(LiteratureCase):
    name = "gpt2_copy_suppression"
    version = "1"
    circuit = CIRCUIT
    description = ("McDougall et al.'s copy-suppression heads L10H7 and L11H10 in GPT-2 small, "
                   "suppressing the name movers' prediction on IOI prompts")

    def dataset(self, n: int, seed: int, split: str = "test", sample: int = 0):
        return build_ioi_dataset(self.tokenizer(), n, seed, split, sample)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """The IOI prompts of ``gpt2_ioi`` (McDougall et al. Section 4 studies copy suppression
        there); metric logit(IO) − logit(S) at END, which the suppressors lower."""
        return to_prompt_set(self.dataset(n, seed, split, sample))
