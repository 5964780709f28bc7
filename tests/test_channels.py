"""plan_channels fills every slot with a role whose inputs are placed below it; channel 0 sits at
circuit.yaml's layers."""
from pathlib import Path

import numpy as np
import pytest

from mibench.circuit import Circuit
from mibench.models.channels import plan_channels, random_layer_map, upstream

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


def test_a_circuit_at_drawn_layers_keeps_its_order_and_moves_its_sites():
    circuit = Circuit.load(ROOT / "planted_trigger" / "circuit.yaml")  # sites r0@TRIG, r1@END, r2@END
    layer_map = {0: 2, 1: 4}
    truth = circuit.truth({"trigger_detector": ["a2.h0"], "trigger_neuron": ["m4"]},
                          neurons={"m4.n0": "trigger_neuron"}, layer_map=layer_map, n_layers=6)
    assert truth.answer_layer == 4
    # the embedding is read by the detector at layer 2; its copy at END by the neurons at layer 4;
    # the final residual is r6
    assert truth.sites["trigger"] == {"r0@TRIG", "r1@TRIG", "r2@TRIG", "r3@END", "r4@END", "r5@END", "r6@END"}
    assert not circuit.disagreements(truth)
    swapped = circuit.truth({"trigger_detector": ["a4.h0"], "trigger_neuron": ["m2"]},
                            neurons={"m2.n0": "trigger_neuron"})
    assert any("out of circuit.yaml's layer order" in d for d in circuit.disagreements(swapped))


def test_random_layer_maps_keep_the_order():
    circuit = Circuit.load(ROOT / "ioi" / "circuit.yaml")
    for seed in range(10):
        layer_map = random_layer_map(circuit, 12, np.random.default_rng(seed))
        assert sorted(layer_map) == sorted({s["layer"] for s in circuit.roles.values()})
        assert list(layer_map.values()) == sorted(set(layer_map.values()))
