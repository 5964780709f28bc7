"""plan_channels fills every slot with a role whose inputs are placed below it; channel 0 sits at
circuit.yaml's layers."""
from pathlib import Path

import numpy as np
import pytest

from mibench.circuit import Circuit
from mibench.models.channels import plan_channels, upstream

ROOT = Path(__file__).resolve().parents[1] / "ground_truth"


@pytest.mark.parametrize("case,shape", [("ioi", (5, 4)), ("ioi", (6, 8)), ("induction", (2, 4)),
                                        ("induction", (12, 12)), ("copy_suppression", (6, 8))])
def test_every_head_hosts_a_role_with_its_inputs_below(case, shape):
    circuit = Circuit.load(ROOT / case / "circuit.yaml")
    n_layers, n_heads = shape
    for seed in range(3):
        channels = plan_channels(circuit, n_layers, n_heads, np.random.default_rng(seed))
        slots = [slot for ch in channels for slot in ch.slots.values()]
        assert sorted(slots) == [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        assert {role: slot[0] for role, slot in channels[0].slots.items()} == \
            {role: spec["layer"] for role, spec in circuit.roles.items()}
        inputs = upstream(circuit)
        for ch in channels:
            for role, (layer, _) in ch.slots.items():
                assert all(src in ch.slots and ch.slots[src][0] < layer for src in inputs[role])


def test_a_slot_no_role_can_fill_is_an_error():
    circuit = Circuit.load(ROOT / "planted_trigger" / "circuit.yaml")  # its MLP role reads a head
    with pytest.raises(ValueError, match="could not place"):
        plan_channels(circuit, 2, 4, np.random.default_rng(0), mlp_groups=2)
