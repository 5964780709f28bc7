"""Indirect Object Identification in GPT-2 small: Wang et al. 2022's 26-head circuit, on the user's
own weights (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

from mibench.api import PromptSet
from mibench.circuit import Circuit
from mibench.literature import LiteratureCase

from ground_truth.gpt2_ioi.dataset import build_ioi_dataset, to_prompt_set

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))


class GPT2IOI(LiteratureCase):
    name = "gpt2_ioi"
    version = "1"
    circuit = CIRCUIT
    description = ("Wang et al.'s IOI circuit in GPT-2 small: name movers, negative and backup name movers, "
                   "S-inhibition, induction, duplicate-token and previous-token heads")
    necessity_exempt = {"backup_name_mover": "silent on clean prompts; they compensate only when the "
                                             "name movers are ablated (Wang et al. Section 3.4)"}

    def dataset(self, n: int, seed: int, split: str = "test", sample: int = 0):
        """The prompts as a Hugging Face ``datasets.Dataset`` (text, token ids, positions, template)."""
        return build_ioi_dataset(self.tokenizer(), n, seed, split, sample)

    def prompts(self, n: int, seed: int, split: str = "test", sample: int = 0) -> PromptSet:
        """IOI prompts in ABBA and BABA order; corrupted: the ABC version of the same template
        (three fresh names), as Wang et al.; metric: logit(IO) − logit(S) at END."""
        return to_prompt_set(self.dataset(n, seed, split, sample))
