"""Copy suppression in GPT-2 small: McDougall et al. 2023's L10H7 and L11H10 on IOI prompts, on the
user's own weights (see README.md beside this file)."""
from __future__ import annotations

from pathlib import Path

from mibench.circuit import Circuit

from ground_truth.gpt2_ioi.dataset import IOIPromptCase

CIRCUIT = Circuit.load(Path(__file__).with_name("circuit.yaml"))


class GPT2CopySuppression(IOIPromptCase):
    name = "gpt2_copy_suppression"
    version = "1"
    circuit = CIRCUIT
    description = ("McDougall et al.'s copy-suppression heads L10H7 and L11H10 in GPT-2 small, "
                   "suppressing the name movers' prediction on IOI prompts")
