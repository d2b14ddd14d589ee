"""Merging parallel linears: nn.Linear layers that read the same input become one wider linear.

A compiler rewrite that torch eager does not do (TVM's CombineParallelDense). On a torch.fx trace
of a module, the call sites of nn.Linear modules that take the same fx node as their only
argument and agree on in_features, weight dtype and device, and on having a bias (of one dtype
and device) or not, are replaced by one nn.Linear: its weight (and bias) is theirs concatenated
along the output dimension, copied once when merging, and its output is split along the last
dimension into contiguous copies (`torch.split_with_sizes_copy`, one kernel) that take the place
of the original outputs. Copies, not views: a consumer then sees the layout the unmerged module
gave it. With views (the merged row stride) torch eager ran a LLaMA layer 16% slower at decode
batch 16 (torch.cat and friends take slower paths with strided inputs); with copies, at the same
speed as unmerged (H200, experiments/results/model_layer_merged16_h200_2026-12-02). The copy
moves the product's output once more: small at decode, where the products stream their weights.
At prefill the products are compute-bound, merging saves nothing and the copies cost: that
layer took 4% more energy merged. Merge for decode. A LLaMA layer's
q/k/v projections become one 6144 x 4096 product and gate/up one 28672 x 4096: fewer, wider
GEMVs, which stream better than narrow ones.

Left as they are: a module called at more than one site (merging one site would keep a second
copy of its weight), subclasses of nn.Linear (their forward may differ), modules with forward
hooks (merged, the hooks would not run) and calls with keyword arguments. Siblings must read the
same node: two nodes computing the same value are not recognised (no CSE).

The result computes the same function up to rounding (each output element is the same dot
product; the wider product may reduce in another order). It is for inference: the merged weight
is a frozen copy (requires_grad False) and later changes to the original weights do not reach
it; every other submodule is shared with the original module, which is left unchanged.
"""
from __future__ import annotations

import operator
from collections import Counter

import torch
from torch import fx, nn

from .graph import fx_trace

MERGED = "merged_linears"    # GraphModule.meta key: merged module name -> the targets it replaced


def merge_linears(module: nn.Module) -> fx.GraphModule:
    """A traced copy of `module` with each group of parallel linears merged (see the module
    docstring); `result.meta["merged_linears"]` maps each merged module's name to the
    targets it replaced (empty where nothing was merged). A GraphError if it cannot be traced."""
    traced = fx_trace(module)
    merged: dict[str, list[str]] = {}
    for nodes in sibling_groups(traced):
        targets = [str(n.target) for n in nodes]
        name = _merged_name(traced, targets)
        linears = [traced.get_submodule(t) for t in targets]
        traced.add_submodule(name, concatenated(linears))
        with traced.graph.inserting_before(nodes[0]):
            out = traced.graph.call_module(name, (nodes[0].args[0],))
            parts = traced.graph.call_function(
                torch.split_with_sizes_copy, (out, [m.out_features for m in linears]), {"dim": -1})
            for i, node in enumerate(nodes):
                node.replace_all_uses_with(traced.graph.call_function(operator.getitem, (parts, i)))
        for node in nodes:
            traced.graph.erase_node(node)
        merged[name] = targets
    traced.delete_all_unused_submodules()
    traced.graph.lint()
    traced.recompile()
    traced.meta[MERGED] = merged
    return traced


def sibling_groups(traced: fx.GraphModule) -> list[list[fx.Node]]:
    """The groups (two or more, each in graph order) of nn.Linear call sites that can merge."""
    sites = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    groups: dict[tuple, list[fx.Node]] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or sites[node.target] != 1 or len(node.args) != 1 \
                or not isinstance(node.args[0], fx.Node):      # (a keyword call has no args)
            continue
        mod = traced.get_submodule(node.target)
        if type(mod) is not nn.Linear or mod._forward_hooks or mod._forward_pre_hooks:
            continue
        bias = None if mod.bias is None else (mod.bias.dtype, mod.bias.device)
        key = (node.args[0], mod.in_features, mod.weight.dtype, mod.weight.device, bias)
        groups.setdefault(key, []).append(node)
    return [nodes for nodes in groups.values() if len(nodes) > 1]


def concatenated(linears: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear computing all of `linears` side by side (weights copied once, frozen)."""
    first = linears[0]
    out = nn.Linear(first.in_features, sum(m.out_features for m in linears),
                    bias=first.bias is not None, device="meta")
    with torch.no_grad():
        out.weight = nn.Parameter(torch.cat([m.weight for m in linears]), requires_grad=False)
        if first.bias is not None:
            out.bias = nn.Parameter(torch.cat([m.bias for m in linears]), requires_grad=False)
    return out


def _merged_name(traced: fx.GraphModule, targets: list[str]) -> str:
    """`parent.q_proj_k_proj_v_proj` where the targets share a parent, else the targets
    joined at the top level; made unique."""
    parents = {t.rpartition(".")[0] for t in targets}
    parent = parents.pop() if len(parents) == 1 else ""
    leaf = "_".join(t.removeprefix(f"{parent}.") if parent else t.replace(".", "_")
                    for t in targets)
    owner = traced.get_submodule(parent)
    while hasattr(owner, leaf):
        leaf += "_merged"
    return f"{parent}.{leaf}" if parent else leaf
