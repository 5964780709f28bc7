import pytest

from mibench import names


def test_node_names_round_trip():
    for name in ["a0.h3", "m2", "m1.n17", "input", "logits"]:
        assert names.parse_node(name).name == name


def test_edge_format_and_parse():
    assert names.edge("a0.h2", "a1.h3", "k") == "a0.h2->a1.h3<k>"
    assert names.edge("a1.h3", "logits") == "a1.h3->logits"
    src, dst, kind = names.parse_edge("input->a1.h0<q>")
    assert (src.kind, dst.name, kind) == ("input", "a1.h0", "q")
    with pytest.raises(ValueError, match="needs kind q, k or v"):
        names.edge("a0.h0", "a1.h0")
    with pytest.raises(ValueError, match="takes no q/k/v"):
        names.edge("a0.h0", "logits", "q")


def test_bad_names_say_what_was_expected():
    with pytest.raises(ValueError, match="expected a\\{layer\\}.h\\{head\\}"):
        names.parse_node("head 3")
    with pytest.raises(ValueError, match="r\\{layer\\}@"):
        names.parse_site("r1-END")


def test_enumeration_attention_only():
    shape = names.Shape(n_layers=2, n_heads=4)
    assert names.nodes(shape) == [f"a{l}.h{h}" for l in range(2) for h in range(4)]
    edges = names.edges(shape)
    # layer 0 heads read input (3 kinds each), layer 1 heads read input + 4 heads, logits read all
    assert len(edges) == 4 * 3 * 1 + 4 * 3 * 5 + 9
    assert len(set(edges)) == len(edges)
    assert "a0.h1->a1.h2<k>" in edges and "a1.h2->a0.h1<k>" not in edges


def test_enumeration_with_mlps():
    shape = names.Shape(n_layers=2, n_heads=2, d_mlp=3)
    assert names.nodes(shape) == ["a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    assert names.neurons(shape)[:2] == ["m0.n0", "m0.n1"] and len(names.neurons(shape)) == 6
    assert "a0.h0->m0" in names.edges(shape) and "m0->a1.h0<v>" in names.edges(shape)
    assert names.sites(shape, ["END"]) == ["r0@END", "r1@END", "r2@END"]
