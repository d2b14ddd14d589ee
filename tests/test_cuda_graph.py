"""measure/cuda_graph.py: replay sizing, capture failures as one line, and (GPU) replays that
read the static inputs."""
import pytest
import torch

from energy_tuner.measure.cuda_graph import MAX_CALLS, calls_per_replay, graph_batch, try_graph_batch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_replay_holds_about_two_ms_of_calls():
    assert calls_per_replay(9e-6) == MAX_CALLS           # short calls: capped
    assert calls_per_replay(2e-4) == 10
    assert calls_per_replay(1e-3) == 2
    assert calls_per_replay(0.05) == 1                   # a long call: one per replay


def test_a_call_that_cannot_be_captured_gives_one_line():
    # without CUDA the side stream cannot be made; on a GPU a sync inside capture is refused
    run_batch, error = try_graph_batch(torch.cuda.synchronize, 1e-5)
    assert run_batch is None
    assert error and "\n" not in error and len(error) <= 300 and ": " in error


@pytest.mark.gpu
@needs_cuda
def test_replays_run_the_captured_calls_on_the_static_inputs():
    a = torch.randn(256, 256, device="cuda")
    b = torch.randn(256, 256, device="cuda")
    run_batch = graph_batch(lambda: a @ b, 1e-5)
    assert len(run_batch.outputs) == run_batch.calls_per_replay == MAX_CALLS
    a.mul_(2)                                            # the replays read a's current contents
    assert run_batch(3 * MAX_CALLS) > 0
    torch.testing.assert_close(run_batch.outputs[-1], a @ b)
    torch.testing.assert_close(run_batch.outputs[0], a @ b)
