"""A model's operator graph as a networkx DAG, and the tuning tasks it holds.

Nodes carry `kind` "task" (an op we tune: matmul, batch_matmul, gemv, linear, conv2d, with `op`,
`shape` and `dtype`) or "torch" (left to torch: norms, softmax, activations, additions; `op` names it);
edges follow the data. Graphs come from a small declarative spec (`spec_graph`: a LLaMA-style
decoder layer in prefill or decode, a ResNet-50 stage) or from a torch.fx trace of an nn.Module
(`module_graph`). `tasks` deduplicates the task nodes by workload and counts them per forward pass.

This module needs networkx only (torch is imported by `module_graph`), so the library loader can
share `linear_task` with it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

TASK_DTYPES = ("float16", "float32")


class GraphError(ValueError):
    """A model spec or module that cannot be read into a graph."""


@dataclass
class Task:
    """One workload to tune and how often a forward pass runs it."""
    op: str
    shape: dict[str, int]
    dtype: str
    count: int = 0
    nodes: list[str] = field(default_factory=list)
    params: dict | None = None      # op options (e.g. matmul accum)

    @property
    def key(self) -> tuple:
        return self.op, tuple(self.shape.items()), self.dtype, tuple(sorted((self.params or {}).items()))

    @property
    def label(self) -> str:
        options = "".join(f" {k}={v}" for k, v in sorted((self.params or {}).items()))
        return f"{self.op} {','.join(map(str, self.shape.values()))} {self.dtype}{options}"

    def make_op(self):
        from ..schedules import make_op

        return make_op(self.op, ",".join(f"{k}={v}" for k, v in self.shape.items()), self.dtype,
                       self.params)


def product_options(dtype: str) -> dict | None:
    """A float16 matmul, batch_matmul or gemv task outputs float16 (accum=float16), as torch's
    products and nn.Linear do, so that no float32 output is written and cast; the Hopper and
    GEMV knob kernels still sum in float32 and round once."""
    return {"accum": "float16"} if dtype == "float16" else None


LINEAR_MAX_ROWS = 16     # up to here a linear layer is a skinny GEMM on W as stored (decode)


def linear_task(m: int, n: int, k: int, dtype: str) -> tuple[str, dict[str, int], str, dict | None]:
    """How a linear layer y[m, n] = x[m, k] W[n, k]^T becomes one of our ops (op, shape, dtype,
    params): a gemv on W as it is stored when there is one row (float16 out for float16, as
    matmul), a `linear` on W as stored for 2..16 rows (decode at a batch; float32 out, cast by
    the caller), else a matmul on W^T (k x n)."""
    if m == 1:
        return "gemv", {"n": n, "k": k}, dtype, product_options(dtype)
    if m <= LINEAR_MAX_ROWS:
        return "linear", {"m": m, "n": n, "k": k}, dtype, None
    return "matmul", {"m": m, "n": n, "k": k}, dtype, product_options(dtype)


class _Builder:
    """Adds nodes in data-flow order; `after` names the producers of each node."""

    def __init__(self, name: str, **attrs) -> None:
        self.graph = nx.DiGraph(name=name, **attrs)

    def task(self, name: str, op: str, shape: dict[str, int], dtype: str, after: list[str],
             params: dict | None = None) -> str:
        return self._add(name, after, kind="task", op=op, shape=shape, dtype=dtype, params=params)

    def linear(self, name: str, m: int, n: int, k: int, dtype: str, after: list[str]) -> str:
        op, shape, dtype, params = linear_task(m, n, k, dtype)
        return self.task(name, op, shape, dtype, after, params)

    def torch(self, name: str, op: str, after: list[str]) -> str:
        return self._add(name, after, kind="torch", op=op)

    def _add(self, name: str, after: list[str], **attrs) -> str:
        self.graph.add_node(name, **attrs)
        self.graph.add_edges_from((a, name) for a in after)
        return name


def decoder_layer(hidden: int, ffn: int, heads: int, kv_heads: int, batch: int, seq: int,
                  phase: str = "prefill", dtype: str = "float16",
                  merge_linears: bool = False) -> nx.DiGraph:
    """A LLaMA-style decoder layer (RMSNorm, grouped-query attention with RoPE, SwiGLU MLP).

    prefill: `seq` tokens per sequence attend to each other; decode: one new token per sequence
    attends to a KV cache of `seq` tokens. Attention runs as batch_matmuls over batch x heads
    (the KV heads repeated to `heads`). `merge_linears`: the layer as compiler/merge.py rewrites
    it, q/k/v as one linear `qkv_proj` (hidden + 2 kv rows) and gate/up as one `gate_up_proj`
    (2 ffn rows)."""
    if phase not in ("prefill", "decode"):
        raise GraphError(f"decoder_layer: phase must be prefill or decode, got {phase!r}")
    if hidden % heads or heads % kv_heads:
        raise GraphError(f"decoder_layer: hidden ({hidden}) must be a multiple of heads ({heads}) "
                         f"and heads a multiple of kv_heads ({kv_heads})")
    head_dim, kv = hidden // heads, kv_heads * (hidden // heads)
    q_len = seq if phase == "prefill" else 1
    tokens = batch * q_len
    g = _Builder("decoder_layer", phase=phase)
    norm = g.torch("attn_norm", "rmsnorm", [])
    if merge_linears:
        q = k = v = g.linear("qkv_proj", tokens, hidden + 2 * kv, hidden, dtype, [norm])
    else:
        q = g.linear("q_proj", tokens, hidden, hidden, dtype, [norm])
        k = g.linear("k_proj", tokens, kv, hidden, dtype, [norm])
        v = g.linear("v_proj", tokens, kv, hidden, dtype, [norm])
    rope = g.torch("rope", "rope", [q, k])
    scores = g.task("qk", "batch_matmul", {"b": batch * heads, "m": q_len, "n": seq, "k": head_dim},
                    dtype, [rope], product_options(dtype))
    probs = g.torch("softmax", "softmax", [scores])
    attn = g.task("pv", "batch_matmul", {"b": batch * heads, "m": q_len, "n": head_dim, "k": seq},
                  dtype, [probs, v], product_options(dtype))
    o = g.linear("o_proj", tokens, hidden, hidden, dtype, [attn])
    res = g.torch("attn_residual", "add", [o])
    norm2 = g.torch("mlp_norm", "rmsnorm", [res])
    if merge_linears:
        gate = up = g.linear("gate_up_proj", tokens, 2 * ffn, hidden, dtype, [norm2])
    else:
        gate = g.linear("gate_proj", tokens, ffn, hidden, dtype, [norm2])
        up = g.linear("up_proj", tokens, ffn, hidden, dtype, [norm2])
    act = g.torch("silu_mul", "silu_mul", [gate, up])
    down = g.linear("down_proj", tokens, hidden, ffn, dtype, [act])
    g.torch("mlp_residual", "add", [down, res])
    return g.graph


RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_IN_CHANNELS = (64, 256, 512, 1024)


def resnet50_stage(stage: int, batch: int = 1, image: int = 224,
                   dtype: str = "float16") -> nx.DiGraph:
    """Stage `stage` (1-4, conv2_x..conv5_x) of ResNet-50 v1.5: bottleneck blocks of 1x1, 3x3
    (stride 2 in the first block of stages 2-4) and 1x1 convolutions, and a 1x1 projection of the
    first block's input; batch norms, ReLUs and additions stay with torch."""
    if stage not in (1, 2, 3, 4):
        raise GraphError(f"resnet50_stage: stage must be 1, 2, 3 or 4, got {stage}")
    if image % 32:
        raise GraphError(f"resnet50_stage: image must be a multiple of 32, got {image}")
    width, size = 64 << (stage - 1), image // (4 << max(0, stage - 2))
    out_c, in_c = 4 * width, RESNET50_IN_CHANNELS[stage - 1]
    g = _Builder("resnet50_stage", stage=stage)
    prev = g.torch("input", "input", [])

    def conv(name: str, h: int, c: int, k: int, r: int, stride: int, after: list[str],
             then: str = "batchnorm_relu") -> str:
        node = g.task(name, "conv2d", {"n": batch, "h": h, "w": h, "c": c, "k": k, "r": r, "s": r,
                                       "stride": stride, "pad": r // 2}, dtype, after)
        return g.torch(f"{name}_{then}", then, [node])

    for block in range(RESNET50_BLOCKS[stage - 1]):
        stride = 2 if block == 0 and stage > 1 else 1
        c = in_c if block == 0 else out_c
        b = f"block{block}"
        a = conv(f"{b}_conv1", size, c, width, 1, 1, [prev])
        a = conv(f"{b}_conv2", size, width, width, 3, stride, [a])
        a = conv(f"{b}_conv3", size // stride, width, out_c, 1, 1, [a], "batchnorm")
        skip = conv(f"{b}_downsample", size, c, out_c, 1, stride, [prev], "batchnorm") \
            if block == 0 else prev
        prev = g.torch(f"{b}_add", "add_relu", [a, skip])
        size //= stride
    return g.graph


MODELS = {"decoder_layer": decoder_layer, "resnet50_stage": resnet50_stage}
BOOLS = {"true": True, "false": False}


def parse_spec(text: str) -> dict:
    """A spec from a JSON file (`{"model": "decoder_layer", "hidden": 4096, ...}`) or inline
    text `name:key=value,...` (e.g. `decoder_layer:hidden=64,ffn=128,heads=4,kv_heads=2,batch=1,
    seq=16,phase=decode,merge_linears=true`; digits are integers, true/false booleans)."""
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise GraphError(f"cannot read model spec {text}: {err}") from None
        if not isinstance(spec, dict):
            raise GraphError(f"model spec {text}: expected a JSON object")
        return spec
    name, _, rest = text.partition(":")
    spec: dict = {"model": name}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise GraphError(f"model spec {text!r}: expected key=value, got {part!r}")
        spec[key] = int(value) if value.isdigit() else BOOLS.get(value, value)
    return spec


def spec_graph(spec: dict, dtype: str) -> nx.DiGraph:
    """The graph a spec describes; `dtype` applies unless the spec names one."""
    spec = dict(spec)
    name = spec.pop("model", None)
    if name not in MODELS:
        raise GraphError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    spec.setdefault("dtype", dtype)
    if spec["dtype"] not in TASK_DTYPES:
        raise GraphError(f"{name}: dtype must be one of {', '.join(TASK_DTYPES)}, "
                         f"got {spec['dtype']!r}")
    import inspect

    params = inspect.signature(MODELS[name]).parameters
    unknown = sorted(set(spec) - set(params))
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in spec]
    if unknown or missing:
        raise GraphError(f"{name}: " + "; ".join(
            ([f"unknown keys {', '.join(unknown)}"] if unknown else [])
            + ([f"missing keys {', '.join(missing)}"] if missing else []))
            + f" (keys: {', '.join(params)})")
    for key, value in spec.items():
        if params[key].annotation == "int" and not (isinstance(value, int) and value > 0):
            raise GraphError(f"{name}: {key} must be a positive integer, got {value!r}")
        if params[key].annotation == "bool" and not isinstance(value, bool):
            raise GraphError(f"{name}: {key} must be true or false, got {value!r}")
    return MODELS[name](**spec)


def tasks(graph: nx.DiGraph) -> list[Task]:
    """The graph's task nodes deduplicated by workload, in data-flow order, with their counts."""
    found: dict[tuple, Task] = {}
    for name in nx.topological_sort(graph):
        node = graph.nodes[name]
        if node["kind"] != "task":
            continue
        task = Task(node["op"], dict(node["shape"]), node["dtype"], params=node.get("params"))
        task = found.setdefault(task.key, task)
        task.count += 1
        task.nodes.append(name)
    return list(found.values())


# ---- torch.fx ---------------------------------------------------------------------------------

def fx_trace(module, example_inputs: tuple | None = None):
    """A torch.fx GraphModule of `module` (its nodes' tensor_meta filled in by running it on
    `example_inputs`, where given); a GraphError if it cannot be traced or run."""
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = torch.fx.symbolic_trace(module)
        if example_inputs is not None:
            ShapeProp(traced).propagate(*example_inputs)
    except Exception as err:  # fx raises many types (TraceError, TypeError, RuntimeError, ...)
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()] or [type(err).__name__]
        raise GraphError(f"cannot trace {type(module).__name__} with torch.fx: {lines[0]}") from None
    return traced


def module_graph(module, example_inputs: tuple) -> nx.DiGraph:
    """The operator graph of a torch.fx trace of `module` run on `example_inputs`: nn.Linear,
    F.linear, matmul/mm/bmm and nn.Conv2d (groups 1, square stride and padding) in float16 or
    float32 become tasks, everything else is a torch node."""
    traced = fx_trace(module, example_inputs)
    g = _Builder(type(module).__name__)
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        after = [a.name for a in node.all_input_nodes if a.name in g.graph]
        found = _fx_task(traced, node)
        if found is None:
            g.torch(node.name, _fx_name(traced, node), after)
        else:
            op, shape, dtype, params = found
            g.task(node.name, op, shape, dtype, after, params)
    return g.graph


def _fx_name(traced, node) -> str:
    """What a torch node does: its module class, function or method name."""
    if node.op == "call_module":
        return type(traced.get_submodule(node.target)).__name__
    return node.target if isinstance(node.target, str) else \
        getattr(node.target, "__name__", str(node.target))


def _meta(arg) -> tuple[tuple[int, ...], str] | None:
    meta = getattr(arg, "meta", {}).get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape), str(meta.dtype).removeprefix("torch.")


def _fx_task(traced, node) -> tuple[str, dict[str, int], str, dict | None] | None:
    """(op, shape, dtype, params) of an fx node we can run, else None."""
    import operator

    import torch
    import torch.nn.functional as F

    inputs = [_meta(a) for a in node.args[:2]]
    if not inputs or inputs[0] is None or inputs[0][1] not in TASK_DTYPES:
        return None
    (x_shape, dtype) = inputs[0]
    if node.op == "call_module":
        mod = traced.get_submodule(node.target)
        if isinstance(mod, torch.nn.Linear):
            return linear_task(math.prod(x_shape[:-1]), mod.out_features, mod.in_features, dtype)
        if isinstance(mod, torch.nn.Conv2d) and len(x_shape) == 4 and mod.groups == 1 \
                and mod.dilation == (1, 1) and mod.stride[0] == mod.stride[1] \
                and mod.padding_mode == "zeros" and isinstance(mod.padding, tuple) \
                and mod.padding[0] == mod.padding[1]:
            n, c, h, w = x_shape
            return ("conv2d", {"n": n, "h": h, "w": w, "c": c, "k": mod.out_channels,
                               "r": mod.kernel_size[0], "s": mod.kernel_size[1],
                               "stride": mod.stride[0], "pad": mod.padding[0]}, dtype, None)
        return None
    if len(inputs) < 2 or inputs[1] is None or inputs[1][1] != dtype:
        return None
    w_shape = inputs[1][0]
    if node.op == "call_function" and node.target is F.linear:
        return linear_task(math.prod(x_shape[:-1]), w_shape[0], w_shape[1], dtype)
    products = {torch.matmul, torch.mm, torch.bmm, operator.matmul}
    if not ((node.op == "call_function" and node.target in products)
            or (node.op == "call_method" and node.target in ("matmul", "mm", "bmm"))):
        return None
    if len(x_shape) == 2 and len(w_shape) == 2 and x_shape[1] == w_shape[0]:
        return "matmul", {"m": x_shape[0], "n": w_shape[1], "k": x_shape[1]}, dtype, \
            product_options(dtype)
    if len(x_shape) == 2 and len(w_shape) == 1 and x_shape[1] == w_shape[0]:
        return "gemv", {"n": x_shape[0], "k": x_shape[1]}, dtype, None
    if len(x_shape) >= 3 and x_shape[:-2] == w_shape[:-2] and x_shape[-1] == w_shape[-2]:
        return "batch_matmul", {"b": math.prod(x_shape[:-2]), "m": x_shape[-2],
                                "n": w_shape[-1], "k": x_shape[-1]}, dtype, product_options(dtype)
    return None
