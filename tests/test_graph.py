"""Model graphs: the decoder-layer and ResNet-50 specs, torch.fx traces, dedupe and counts."""
import json

import networkx as nx
import pytest
import torch

from energy_tuner.compiler.graph import (GraphError, module_graph, parse_spec, resnet50_stage,
                                         spec_graph, tasks)
from tests.conftest import DATA

LLAMA = dict(model="decoder_layer", hidden=4096, ffn=14336, heads=32, kv_heads=8)


def by_label(found):
    return {(t.op, tuple(t.shape.values())): t for t in found}


def test_decoder_decode_batch1_is_gemvs_and_attention_bmms():
    g = spec_graph({**LLAMA, "batch": 1, "seq": 2048, "phase": "decode"}, "float16")
    assert nx.is_directed_acyclic_graph(g)
    found = by_label(tasks(g))
    assert {k: t.count for k, t in found.items()} == {
        ("gemv", (4096, 4096)): 2,            # q_proj, o_proj
        ("gemv", (1024, 4096)): 2,            # k_proj, v_proj (8 KV heads of 128)
        ("gemv", (14336, 4096)): 2,           # gate, up
        ("gemv", (4096, 14336)): 1,           # down
        ("batch_matmul", (32, 1, 2048, 128)): 1,   # q k^T over the 2048-token cache
        ("batch_matmul", (32, 1, 128, 2048)): 1}   # p v
    assert sorted(found[("gemv", (4096, 4096))].nodes) == ["o_proj", "q_proj"]
    assert all(t.dtype == "float16" for t in found.values())
    # float16 out, as nn.Linear's: the served layer casts nothing
    assert found[("gemv", (14336, 4096))].make_op().output_dtype == "float16"
    torch_ops = [n for n, d in g.nodes(data=True) if d["kind"] == "torch"]
    assert {g.nodes[n]["op"] for n in torch_ops} == {"rmsnorm", "rope", "softmax", "add", "silu_mul"}
    assert nx.has_path(g, "q_proj", "down_proj")


def test_decoder_prefill_is_matmuls_and_batched_decode_is_linears():
    prefill = by_label(tasks(spec_graph({**LLAMA, "batch": 1, "seq": 2048}, "float16")))
    assert prefill[("matmul", (2048, 14336, 4096))].count == 2
    assert prefill[("batch_matmul", (32, 2048, 2048, 128))].count == 1
    decode16 = by_label(tasks(spec_graph({**LLAMA, "batch": 16, "seq": 512, "phase": "decode"},
                                         "float16")))
    assert {k: t.count for k, t in decode16.items() if k[0] != "batch_matmul"} == {
        ("linear", (16, 4096, 4096)): 2, ("linear", (16, 1024, 4096)): 2,
        ("linear", (16, 14336, 4096)): 2, ("linear", (16, 4096, 14336)): 1}
    assert decode16[("linear", (16, 1024, 4096))].params is None
    assert decode16[("linear", (16, 1024, 4096))].make_op().input_shapes == [(16, 4096), (1024, 4096)]
    assert decode16[("batch_matmul", (512, 1, 512, 128))].count == 1
    decode17 = by_label(tasks(spec_graph({**LLAMA, "batch": 17, "seq": 512, "phase": "decode"},
                                         "float16")))
    assert decode17[("matmul", (17, 1024, 4096))].params == {"accum": "float16"}
    # float16 products give float16 out, as nn.Linear and torch.matmul do
    assert prefill[("matmul", (2048, 14336, 4096))].make_op().output_dtype == "float16"
    assert prefill[("batch_matmul", (32, 2048, 2048, 128))].make_op().output_dtype == "float16"
    assert prefill[("matmul", (2048, 14336, 4096))].label == "matmul 2048,14336,4096 float16 accum=float16"
    f32 = by_label(tasks(spec_graph({**LLAMA, "batch": 1, "seq": 2048}, "float32")))
    assert f32[("matmul", (2048, 14336, 4096))].params is None


def test_resnet50_stage_dedupes_repeated_blocks():
    g = resnet50_stage(3, batch=2)
    found = tasks(g)
    assert sum(t.count for t in found) == 6 * 3 + 1       # 6 bottlenecks and one projection
    counts = {(t.shape["c"], t.shape["k"], t.shape["r"], t.shape["stride"], t.shape["h"]): t.count
              for t in found}
    assert counts[(512, 256, 1, 1, 28)] == 1               # first block, stage input 28x28
    assert counts[(256, 256, 3, 2, 28)] == 1               # stride 2 in the 3x3
    assert counts[(256, 256, 3, 1, 14)] == 5
    assert counts[(1024, 256, 1, 1, 14)] == 5
    assert counts[(512, 1024, 1, 2, 28)] == 1              # the projection
    assert all(t.shape["n"] == 2 for t in found)


def test_spec_text_and_json_file(tmp_path):
    text = "decoder_layer:hidden=64,ffn=128,heads=4,kv_heads=2,batch=1,seq=16,phase=decode"
    spec = parse_spec(text)
    assert spec == {"model": "decoder_layer", "hidden": 64, "ffn": 128, "heads": 4,
                    "kv_heads": 2, "batch": 1, "seq": 16, "phase": "decode"}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**spec, "dtype": "float32"}))
    from_file = tasks(spec_graph(parse_spec(str(path)), "float16"))
    assert {t.dtype for t in from_file} == {"float32"}    # the spec's dtype wins
    assert [t.key for t in from_file] == [t.key for t in tasks(spec_graph(spec, "float32"))]


@pytest.mark.parametrize("spec,fragment", [
    ({"model": "gpt9"}, "unknown model"),
    ({**LLAMA, "batch": 1}, "missing keys seq"),
    ({**LLAMA, "batch": 1, "seq": 8, "layers": 2}, "unknown keys layers"),
    ({**LLAMA, "batch": 0, "seq": 8}, "batch must be a positive integer"),
    ({**LLAMA, "batch": 1, "seq": 8, "phase": "train"}, "phase must be prefill or decode"),
    ({**LLAMA, "heads": 5, "batch": 1, "seq": 8}, "multiple of heads"),
    ({"model": "resnet50_stage", "stage": 5}, "stage must be"),
    ({**LLAMA, "batch": 1, "seq": 8, "dtype": "int8"}, "dtype must be"),
])
def test_bad_specs(spec, fragment):
    with pytest.raises(GraphError, match=fragment):
        spec_graph(spec, "float16")


def test_bad_spec_text(tmp_path):
    with pytest.raises(GraphError, match="expected key=value"):
        parse_spec("decoder_layer:hidden")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GraphError, match="cannot read model spec"):
        parse_spec(str(bad))
    with pytest.raises(GraphError, match="cannot read model spec"):
        parse_spec(str(tmp_path / "missing.json"))


def test_fx_trace_of_a_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_model", DATA / "tiny_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    module, inputs = mod.build()
    g = module_graph(module, inputs)
    found = by_label(tasks(g))
    assert {k: t.count for k, t in found.items()} == {("linear", (4, 32, 16)): 2,
                                                      ("linear", (4, 16, 32)): 1}
    assert [g.nodes[n]["op"] for n in g if g.nodes[n]["kind"] == "torch"] == ["relu"]


class Mixed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x, q, k, w, v):
        y = self.grouped(self.conv(x))                 # (2, 8, 4, 4)
        scores = torch.matmul(q, k.transpose(-1, -2))  # (2, 3, 5, 6)
        s = torch.bmm(q[0], k[0].transpose(1, 2))      # (3, 5, 6)
        z = torch.nn.functional.linear(y.mean((2, 3)), self.head.weight)  # 2 rows
        return y.sum() + scores.sum() + s.sum() + (w @ v).sum() + z.sum() + (q.half() @ q.half().mT).sum()


def test_fx_maps_products_and_convs_and_leaves_the_rest():
    inputs = (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 5, 7), torch.randn(2, 3, 6, 7),
              torch.randn(9, 7), torch.randn(7))
    found = by_label(tasks(module_graph(Mixed(), inputs)))
    assert set(found) == {
        ("conv2d", (2, 8, 8, 3, 8, 3, 3, 2, 1)),       # NCHW module -> NHWC task
        ("batch_matmul", (6, 5, 6, 7)),                # 4-D matmul over 2 x 3 heads
        ("batch_matmul", (3, 5, 6, 7)),
        ("linear", (2, 4, 8)),                         # F.linear, 2 rows
        ("gemv", (9, 7)),                              # matrix @ vector
        ("batch_matmul", (6, 5, 5, 7))}                # the float16 product q q^T
    assert found[("batch_matmul", (6, 5, 5, 7))].dtype == "float16"   # grouped conv: torch


class Branchy(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_untraceable_module_is_one_clear_error():
    with pytest.raises(GraphError, match="cannot trace Branchy with torch.fx"):
        module_graph(Branchy(), (torch.randn(3),))


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("phase,batch", [("decode", 1), ("decode", 4), ("prefill", 2)])
def test_fx_trace_of_the_example_decoder_matches_the_spec(phase, batch, merge):
    """experiments/decoder_layer.py's torch module has the tasks graph.decoder_layer predicts,
    also once compiler/merge.py has merged its parallel linears (merge_linears in the spec)."""
    from energy_tuner.compiler.merge import merge_linears
    from experiments.decoder_layer import SMALL, DecoderLayer, example_inputs

    layer = DecoderLayer(**SMALL).eval()
    inputs = example_inputs(layer, batch, 16, phase, torch.float32, "cpu")
    module = merge_linears(layer) if merge else layer
    traced = sorted((t.key, t.count) for t in tasks(module_graph(module, inputs)))
    spec = {"model": "decoder_layer", **SMALL, "batch": batch, "seq": 16, "phase": phase,
            "merge_linears": merge}
    assert traced == sorted((t.key, t.count) for t in tasks(spec_graph(spec, "float32")))


def test_merged_decoder_spec_has_qkv_and_gate_up_tasks():
    g = spec_graph({**LLAMA, "batch": 1, "seq": 2048, "phase": "decode", "merge_linears": True},
                   "float16")
    assert nx.is_directed_acyclic_graph(g) and nx.has_path(g, "qkv_proj", "down_proj")
    found = by_label(tasks(g))
    assert {k: t.count for k, t in found.items() if k[0] == "gemv"} == {
        ("gemv", (6144, 4096)): 1,            # q, k, v: 4096 + 1024 + 1024 rows
        ("gemv", (4096, 4096)): 1,            # o_proj
        ("gemv", (28672, 4096)): 1,           # gate, up
        ("gemv", (4096, 14336)): 1}           # down
    assert found[("gemv", (6144, 4096))].nodes == ["qkv_proj"]
    assert set(g.predecessors("silu_mul")) == {"gate_up_proj"}
    assert {"rope", "pv"} <= set(g.successors("qkv_proj"))
    prefill = by_label(tasks(spec_graph({**LLAMA, "batch": 1, "seq": 2048, "merge_linears": True},
                                        "float16")))
    assert prefill[("matmul", (2048, 28672, 4096))].count == 1
    assert prefill[("matmul", (2048, 4096, 4096))].count == 1


def test_spec_text_booleans():
    spec = parse_spec("decoder_layer:hidden=64,ffn=128,heads=4,kv_heads=2,batch=1,seq=16,"
                      "merge_linears=true")
    assert spec["merge_linears"] is True
    calls = lambda s: sum(t.count for t in tasks(spec_graph(s, "float32")))  # noqa: E731
    assert calls(spec) == 4 + 2                              # qkv, o, gate_up, down; 2 bmms
    assert calls({**spec, "merge_linears": False}) == 7 + 2
    for bad in (1, "yes"):
        with pytest.raises(GraphError, match="merge_linears must be true or false"):
            spec_graph({**spec, "merge_linears": bad}, "float32")
