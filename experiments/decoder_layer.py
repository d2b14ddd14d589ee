"""Example: a LLaMA-style decoder layer whose linear layers are served by a tuned kernel library.

    python -m experiments.decoder_layer OUT [--phase decode|prefill] [--trials N] [--full] [--merge]

Traces the torch module below with torch.fx, tunes its tasks from one budget (`api.tune_model`),
exports the chosen kernels as a library, loads it (`api.load`), swaps the layer's nn.Linear
modules for library calls (`Library.serve`) and checks the served layer's output against torch.
On a CPU it runs a small layer in float32 on llvm (hidden 64); `--full` (for a GPU) is the
issue's layer: hidden 4096, FFN 14336, 32 heads, 8 KV heads, float16. Attention's batch_matmuls
are tuned and reported per task but stay with torch in the served layer (only nn.Linear is
swapped). `--merge` first merges the parallel linears (compiler/merge.py: q/k/v into one,
gate/up into one), then tunes and serves the merged module, still checked against the unmerged
torch layer. Writes OUT/report.json and the library under OUT/lib.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

SMALL = dict(hidden=64, ffn=128, heads=4, kv_heads=2)
FULL = dict(hidden=4096, ffn=14336, heads=32, kv_heads=8)


class DecoderLayer(nn.Module):
    """RMSNorm, grouped-query attention with rotary embeddings, SwiGLU MLP (no biases).

    forward(x, cos, sin, k_cache, v_cache, mask): x (batch, q_len, hidden); the caches hold the
    earlier tokens' keys and values (batch, kv_heads, past, head_dim; past = 0 in prefill);
    mask (q_len, past + q_len) is added to the attention scores (causal in prefill)."""

    def __init__(self, hidden: int, ffn: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        kv = kv_heads * self.head_dim
        self.attn_norm, self.mlp_norm = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.q_proj, self.o_proj = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden, bias=False)
        self.k_proj, self.v_proj = nn.Linear(hidden, kv, bias=False), nn.Linear(hidden, kv, bias=False)
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def forward(self, x, cos, sin, k_cache, v_cache, mask):
        b, q_len, hidden = x.shape[0], x.shape[1], self.heads * self.head_dim
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, q_len, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, q_len, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        k = torch.cat((k_cache, k), dim=2).repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = torch.cat((v_cache, v), dim=2).repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim ** -0.5 + mask
        attn = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, q_len, hidden))
        h = self.mlp_norm(x)
        return x + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


def example_inputs(layer: DecoderLayer, batch: int, seq: int, phase: str, dtype: torch.dtype,
                   device: str) -> tuple[torch.Tensor, ...]:
    """Inputs of one forward pass: prefill runs `seq` tokens, decode one token after `seq - 1`
    cached ones (so attention spans `seq` keys either way, as graph.decoder_layer assumes)."""
    q_len, past = (seq, 0) if phase == "prefill" else (1, seq - 1)
    gen = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    pos = torch.arange(past, past + q_len, dtype=torch.float32)
    freq = 1.0 / 10000 ** (torch.arange(0, layer.head_dim, 2, dtype=torch.float32) / layer.head_dim)
    angles = torch.cat([pos[:, None] * freq[None]] * 2, dim=-1)
    mask = torch.full((q_len, past + q_len), float("-inf")).triu(past + 1)
    return (rand(batch, q_len, layer.heads * layer.head_dim),
            angles.cos().to(device, dtype), angles.sin().to(device, dtype),
            rand(batch, layer.kv_heads, past, layer.head_dim),
            rand(batch, layer.kv_heads, past, layer.head_dim), mask.to(device, dtype))


def main() -> None:
    from energy_tuner.compiler import api

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--phase", choices=("decode", "prefill"), default="decode")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--full", action="store_true", help="the issue's layer (for a GPU)")
    ap.add_argument("--merge", action="store_true", help="merge parallel linears first")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    layer = DecoderLayer(**(FULL if args.full else SMALL)).to(device, dtype).eval()
    inputs = example_inputs(layer, args.batch, args.seq, args.phase, dtype, device)
    args.out.mkdir(parents=True, exist_ok=True)
    module = api.merge_linears(layer) if args.merge else layer
    run = api.tune_model(module, inputs, target="cuda" if cuda else "llvm", trials=args.trials,
                         db=args.out / "tune.sqlite", export=args.out / "lib")
    lib = api.load(args.out / "lib")
    with torch.inference_mode():
        expected = layer(*inputs)
        served = lib.serve(module)
        got = module(*inputs)
    error = float((got.float() - expected.float()).norm() / expected.float().norm())
    report = {**run.to_dict(), "served_linear_layers": served,
              "merged_linears": module.meta["merged_linears"] if args.merge else None,
              "kernel_calls": {k.entry["library"]: k.calls for k in lib.kernels},
              "rel_error_vs_torch": error}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    from rich.console import Console

    Console().print(api.report(run))
    print(f"served {served} linear layers by the library; relative error vs torch {error:.2e}")


if __name__ == "__main__":
    main()
