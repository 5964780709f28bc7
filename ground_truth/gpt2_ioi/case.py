"""Indirect Object Identification in GPT-2 small: Wang et al. 2022's 26-head circuit, on the user's
own weights (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

from mibench.circuit import Circuit

from ground_truth.gpt2_ioi.dataset import IOIPromptCase

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))


class GPT2IOI(IOIPromptCase):
    name = "gpt2_ioi"
    version = "1"
    circuit = CIRCUIT
    description = ("Wang et al.'s IOI circuit in GPT-2 small: name movers, negative and backup name movers, "
                   "S-inhibition, induction, duplicate-token and previous-token heads")
    necessity_exempt = {"backup_name_mover": "silent on clean prompts; they compensate only when the "
                                             "name movers are ablated (Wang et al. Section 3.4)"}
