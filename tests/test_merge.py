"""compiler/merge.py: exactly the sibling linears merge, the merged module computes what the
original does, and served by a library it runs the kernel of the merged shape."""
import warnings

import pytest
import torch
from torch import nn

from energy_tuner.compiler import api
from energy_tuner.compiler.library import LibraryFallbackWarning
from energy_tuner.compiler.merge import merge_linears


def linear_targets(gm: torch.fx.GraphModule) -> list[str]:
    return [n.target for n in gm.graph.nodes if n.op == "call_module"
            and isinstance(gm.get_submodule(n.target), nn.Linear)]


def test_decoder_layer_merges_qkv_and_gate_up():
    from experiments.decoder_layer import SMALL, DecoderLayer, example_inputs

    torch.manual_seed(0)
    layer = DecoderLayer(**SMALL).eval()
    merged = merge_linears(layer)
    assert merged.meta["merged_linears"] == {"q_proj_k_proj_v_proj": ["q_proj", "k_proj", "v_proj"],
                                             "gate_proj_up_proj": ["gate_proj", "up_proj"]}
    assert linear_targets(merged) == ["q_proj_k_proj_v_proj", "o_proj", "gate_proj_up_proj",
                                      "down_proj"]
    qkv = merged.get_submodule("q_proj_k_proj_v_proj")
    assert qkv.weight.shape == (64 + 2 * 32, 64) and not qkv.weight.requires_grad
    torch.testing.assert_close(qkv.weight[64:96], layer.k_proj.weight, rtol=0, atol=0)
    assert merged.o_proj is layer.o_proj                  # unmerged modules are shared, not copied
    assert not hasattr(merged, "q_proj") and hasattr(layer, "q_proj")   # the original is intact
    for phase, batch in (("decode", 1), ("decode", 3), ("prefill", 2)):
        inputs = example_inputs(layer, batch, 8, phase, torch.float32, "cpu")
        with torch.no_grad():
            torch.testing.assert_close(merged(*inputs), layer(*inputs), rtol=1e-5, atol=1e-5)


class Siblings(nn.Module):
    """Linears on x: a, b (biased) merge; c, d (no bias) merge apart from them; e reads
    another input; u is called twice (left alone); h has a hook, s is a subclass, k is called
    with a keyword (each would otherwise join c, d); p, q read a merged output (a chain)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 5), nn.Linear(8, 3)
        self.c, self.d = nn.Linear(8, 4, bias=False), nn.Linear(8, 6, bias=False)
        self.e, self.u = nn.Linear(8, 4, bias=False), nn.Linear(8, 8, bias=False)
        self.h, self.k = nn.Linear(8, 2, bias=False), nn.Linear(8, 2, bias=False)
        self.s = nn.modules.linear.NonDynamicallyQuantizableLinear(8, 2, bias=False)  # a leaf
        self.p, self.q = nn.Linear(5, 2), nn.Linear(5, 7)
        self.h.register_forward_hook(lambda mod, args, out: out * 2)

    def forward(self, x, y):
        a = self.a(x)
        out = [a, self.b(x), self.c(x), self.e(y), self.d(x), self.u(x), self.u(y), self.h(x),
               self.s(x), self.k(input=x), self.p(a), self.q(a)]
        return torch.cat([t.flatten() for t in out]) + a.sum()   # a used three times


def test_only_siblings_merge_and_the_function_is_the_same():
    torch.manual_seed(0)
    module = Siblings()
    merged = merge_linears(module)
    assert merged.meta["merged_linears"] == {"a_b": ["a", "b"], "c_d": ["c", "d"], "p_q": ["p", "q"]}
    assert sorted(linear_targets(merged)) == ["a_b", "c_d", "e", "h", "k", "p_q", "s", "u", "u"]
    assert merged.a_b.bias.shape == (8,) and merged.c_d.bias is None
    x, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(merged(x, y), module(x, y), rtol=1e-6, atol=1e-6)


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 5, bias=False), nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.a(x), self.b(x)


def test_split_outputs_are_contiguous_as_the_unmerged_outputs_were():
    pair = Pair()
    merged, x = merge_linears(pair), torch.randn(4, 8)
    (a, b), (a0, b0) = merged(x), pair(x)
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()   # copies, not views
    assert (a.shape, a.stride(), b.shape, b.stride()) == (a0.shape, a0.stride(), b0.shape, b0.stride())
    assert a.view(20).shape == (20,)          # what a view of the merged product would refuse
    with torch.no_grad():
        torch.testing.assert_close((a, b), (a0, b0), rtol=1e-6, atol=1e-6)


def test_nested_siblings_merge_under_their_parent_and_nothing_else_changes():
    outer = nn.Sequential(Pair())
    merged = merge_linears(outer)
    assert merged.meta["merged_linears"] == {"0.a_b": ["0.a", "0.b"]}
    assert isinstance(merged.get_submodule("0.a_b"), nn.Linear)
    lone = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    assert merge_linears(lone).meta["merged_linears"] == {}


def test_merge_is_also_api_merge_linears():
    assert api.merge_linears is merge_linears


class Gated(nn.Module):
    """Two 16 -> 16 linears on x merge into the tiny model's 16 -> 32 (whose kernel the
    model_tune library holds); out (16 -> 8) has no kernel there."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
        self.out = nn.Linear(16, 8, bias=False)

    def forward(self, x):
        return self.out(torch.relu(self.gate(x)) * self.up(x))


@pytest.fixture
def served_gated(model_tune):
    _, lib_dir, _, rc = model_tune
    assert rc == 0
    torch.manual_seed(0)
    module, x = Gated().eval(), torch.randn(2, 2, 16)
    with torch.no_grad():
        expected = module(x)
    merged = merge_linears(module)
    lib = api.load(lib_dir)
    assert lib.serve(merged) == 2                      # gate_up and out
    kernel = next(k for k in lib.kernels if k.inputs == ((4, 16), (32, 16)))
    return merged, x, expected, kernel


def test_served_merged_module_runs_the_merged_kernel_and_falls_back_for_others(served_gated):
    merged, x, expected, kernel = served_gated
    before = kernel.calls
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            got = merged(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert kernel.calls == before + 1                  # gate_up: the library's 16 -> 32 kernel
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, LibraryFallbackWarning)]
    assert any("no linear kernel for inputs [4, 16] x [8, 16]" in m for m in fallbacks)
    assert not any("x [16, 16]" in m for m in fallbacks)   # no unmerged gate or up left


def test_torch_compile_traces_the_served_merged_module(served_gated):
    merged, x, expected, kernel = served_gated
    compiled = torch.compile(merged, backend="aot_eager", fullgraph=True)
    before = kernel.calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LibraryFallbackWarning)
        with torch.no_grad():
            got = compiled(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert kernel.calls == before + 1
