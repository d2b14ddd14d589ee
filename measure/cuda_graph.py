"""Gap-free launches of a torch call: back-to-back calls captured in one CUDA graph, replayed.

Python launches a kernel in ~10-20 µs, so a Python-launched loop of shorter calls leaves the GPU
idle between them and measures dispatch, not kernels (GUIDE §3). `try_graph_batch` captures a
call several times into a `torch.cuda.CUDAGraph` (after a warm-up on a side stream, as torch
asks) and gives a `run_batch(n)` for measure/protocol.py that replays the graph back to back.
The captured calls read the tensors the call closes over (static inputs: the replays see their
current contents); `run_batch` keeps the graph and every captured call's output alive.
"""
from __future__ import annotations

import math
import time
from typing import Callable

REPLAY_S = 2e-3    # work per replay: the next replay's launch hides behind it
MAX_CALLS = 64     # captured calls per replay at most (each keeps its output)
WARMUP_CALLS = 3


def calls_per_replay(latency_s: float) -> int:
    """How many calls one replay holds: about REPLAY_S of work, 1 to MAX_CALLS."""
    return max(1, min(MAX_CALLS, math.ceil(REPLAY_S / latency_s)))


def graph_batch(call: Callable[[], object], latency_s: float) -> Callable[[int], float]:
    """run_batch(n): at least n calls as graph replays back to back, synchronized; returns
    seconds per call. `latency_s` (a rough per-call time) sizes the replay. Raises what
    the capture raises (a call that syncs, allocates outside torch or leaves the stream)."""
    import torch

    per_replay = calls_per_replay(latency_s)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = [call() for _ in range(per_replay)]
    graph.replay()
    torch.cuda.synchronize()

    def run_batch(calls: int) -> float:
        replays = max(1, math.ceil(calls / per_replay))
        start = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / (replays * per_replay)

    run_batch.graph, run_batch.outputs = graph, outputs     # alive as long as the closure
    run_batch.calls_per_replay = per_replay
    return run_batch


def try_graph_batch(call: Callable[[], object], latency_s: float
                    ) -> tuple[Callable[[int], float] | None, str | None]:
    """(graph_batch's run_batch, None), or (None, the error in one line) where capture fails."""
    try:
        return graph_batch(call, latency_s), None
    except Exception as err:  # not capturable here (no CUDA, or a call capture refuses)
        return None, f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


__all__ = ["MAX_CALLS", "REPLAY_S", "calls_per_replay", "graph_batch", "try_graph_batch"]
