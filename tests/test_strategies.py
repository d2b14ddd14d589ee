"""Strategies and spaces: the registries, every knob space's mutators, the genetic search."""
import math

import numpy as np
import pytest
from tvm.target import Target

from energy_tuner.compiler.cli import main
from energy_tuner.compiler.database import Record
from energy_tuner.compiler.objective import Objective
from energy_tuner.compiler.scoring import Scorer
from energy_tuner.compiler.spaces import SpaceError, TraceSpace, choose_space, space_names
from energy_tuner.compiler.strategies import STRATEGIES, SearchSetup, strategy_for
from energy_tuner.compiler.strategies.genetic import GeneticStrategy
from energy_tuner.compiler.target import opt_in_shared_memory
from energy_tuner.schedules import OPS, make_op
from energy_tuner.schedules.cpu_matmul import CpuMatmul
from energy_tuner.schedules.knobs import SPACES

LLVM = Target({"kind": "llvm", "num-cores": 2})
TARGETS = [LLVM, opt_in_shared_memory(Target("nvidia/nvidia-h100"))]  # an sm_90 GPU, no GPU needed


def workloads():
    """Every op at its default shapes, in every dtype, on llvm and on an sm_90 target."""
    for name, cls in OPS.items():
        for target in TARGETS:
            kind = target.kind.name
            for dtype in ("float16", "float32"):
                for params in (None, {"impl": "dequant"}):  # lut_mpgemm's dequant twin too
                    try:
                        yield make_op(name, cls.default_shape[kind], dtype, params), target
                    except Exception:  # an op that does not take this dtype or option
                        continue


def an_instance(cls):
    for op, target in workloads():
        if cls.applies(op, target):
            return cls(op, target)
    raise AssertionError(f"knob space {cls.name} applies to no default workload")


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_knob_space_mutates_and_crosses_over(name):
    space = an_instance(SPACES[name])
    rng = np.random.default_rng(0)
    knobs = {k.name: k.values for k in space.knobs}
    for _ in range(20):
        a, b = space.sample(rng), space.sample(rng)
        assert set(a) == set(knobs) and all(a[k] in knobs[k] for k in a)
        mutated = space.mutate(a, rng)
        assert mutated != a and all(mutated[k] in knobs[k] for k in mutated)
        assert space.key(mutated) != space.key(a)
        child = space.crossover(a, b, rng)
        assert all(child[k] in (a[k], b[k]) for k in child)
    a = space.sample(rng)
    b = space.mutate(space.mutate(space.mutate(a, rng), rng), rng)
    children = [space.crossover(a, b, rng) for _ in range(20)]
    assert any(c != a for c in children) and any(c != b for c in children)


def test_space_choice_goes_through_the_registries():
    op = make_op("matmul", "64,64,64", "float32")
    assert space_names(op, LLVM) == ["cpu_matmul", "trace"]
    assert isinstance(choose_space(op, LLVM), CpuMatmul)               # a knob space wins
    assert isinstance(choose_space(op, LLVM, "trace"), TraceSpace)
    gemv = make_op("gemv", "64,64", "float32")
    assert isinstance(choose_space(gemv, LLVM), TraceSpace)            # none applies: traces
    with pytest.raises(SpaceError, match="cpu_matmul"):
        choose_space(gemv, LLVM, "cpu_matmul")
    assert strategy_for(choose_space(op, LLVM)) is STRATEGIES["genetic"]
    assert strategy_for(choose_space(op, LLVM, "trace")) is STRATEGIES["evolutionary"]
    with pytest.raises(ValueError):
        strategy_for(choose_space(op, LLVM), "evolutionary")


def test_unknown_space_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["--op", "gemv", "--shape", "64,64", "--target", "llvm", "--space", "cpu_matmul",
              "--db", str(tmp_path / "d.sqlite")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not apply" in err[0]


class LatencyModel:
    """A 'model' that knows the true cost of a config: the genetic strategy must follow it."""

    def __init__(self, space):
        self.space = space

    def predict_log(self, features):
        return {"latency": features[:, 0], "energy": None, "power": None}


def cost(space, config):
    """A made-up but fixed cost: least for the largest tiles with vectorize and parallel."""
    f = space.features(config)
    return math.exp(-f["log_tile_i"] - f["log_tile_j"] - 2 * f["vectorize"] - f["parallel"])


def genetic(space, scorer, batch=8, population=64, seed=0, seeds=True):
    value = lambda r: r.latency_s if r.status == "ok" else math.inf  # noqa: E731
    return GeneticStrategy(SearchSetup(space.op, LLVM, space, scorer, value, seed=seed,
                                       batch=batch, population=population, seeds=seeds))


def record(cand, latency):
    return Record(id=None, workload_key="k", workload={}, target="", device="",
                  objective="latency", mod_hash=cand.mod_hash, trace=cand.trace, status="ok",
                  latency_s=latency)


def test_genetic_search_rejects_dedupes_and_improves():
    space = CpuMatmul(make_op("matmul", "256,256,256", "float32"), LLVM)

    class TrueScorer(Scorer):       # scores by the true cost, as a perfect model would
        def __call__(self, features):
            return np.exp(-features[:, 0])

    strategy = genetic(space, TrueScorer(Objective("latency"), None))
    strategy.features = lambda cands: np.array([[math.log(cost(space, c.handle))] for c in cands])
    seen, firsts = set(), []
    for generation in range(6):
        batch = strategy.propose()
        assert len(batch) == 8
        for cand in batch:
            assert cand.mod_hash not in seen                      # never proposed twice
            assert space.reject(cand.handle) is None              # rejected never proposed
            assert cand.trace == {"space": "cpu_matmul", "config": cand.handle}
            seen.add(cand.mod_hash)
            strategy.learn(cand, record(cand, cost(space, cand.handle)))
        firsts.append(min(cost(space, c.handle) for c in batch))
        strategy.end_batch(batch, {})
    assert sum(len(k) for k in strategy.rejected.values()) > 0
    assert "exceeds a 32 KiB L1 cache" in strategy.report()
    every = [c for c in (space.sample(np.random.default_rng(i)) for i in range(2000))
             if space.reject(c) is None]
    assert min(firsts) <= np.quantile([cost(space, c) for c in every], 0.01)


def test_genetic_search_stops_when_the_space_is_exhausted():
    space = CpuMatmul(make_op("matmul", "4,4,4", "float32"), LLVM)   # 1*1*3 tiles... x 2*2*3
    strategy = genetic(space, Scorer(Objective("latency"), LatencyModel(space)), batch=16)
    total = 0
    while batch := strategy.propose():
        total += len(batch)
        assert total <= 200
    sizes = [len(k.values) for k in space.knobs]
    assert total == math.prod(sizes) - sum(len(k) for k in strategy.rejected.values())


def test_seeds_lead_the_first_batch_once_and_rejected_seeds_are_skipped():
    space = CpuMatmul(make_op("matmul", "256,256,256", "float32"), LLVM)
    rng = np.random.default_rng(3)
    valid = [c for c in (space.sample(rng) for _ in range(200)) if space.reject(c) is None][:3]
    invalid = next(c for c in (space.sample(rng) for _ in range(500)) if space.reject(c))
    space.seeds = lambda: [valid[0], invalid, valid[1], valid[0], valid[2]]
    strategy = genetic(space, Scorer(Objective("latency"), LatencyModel(space)))
    known = strategy._candidate(valid[2])
    strategy.learn(known, record(known, 1.0))                    # already measured: not again
    first = strategy.propose()
    assert [c.handle for c in first[:2]] == valid[:2] and len(first) == 8
    assert all(space.reject(c.handle) is None for c in first)
    later = [c.handle for _ in range(3) for c in strategy.propose()]
    assert not any(c in later for c in valid)
    unseeded = genetic(space, Scorer(Objective("latency"), LatencyModel(space)), seeds=False)
    assert not any(c.handle in valid[:2] for c in unseeded.propose())   # --no-seeds


def test_hopper_seeds_run_on_the_tables_shapes():
    from energy_tuner.schedules.hopper_gemm import HopperGemmSpace
    for accum, epilogue in ((None, "tma_half"), ("float16", "tma")):
        space = HopperGemmSpace(make_op("matmul", "4096,4096,4096", "float16",
                                        {"accum": accum} if accum else None), TARGETS[1])
        seeds = space.seeds()
        assert seeds[0]["epilogue"] == epilogue and all(space.reject(c) is None for c in seeds)
        names = {k.name for k in space.knobs}
        assert all(set(c) == names and all(c[k.name] in k.values for k in space.knobs)
                   for c in seeds)
    small = HopperGemmSpace(make_op("matmul", "256,384,512", "float16"), TARGETS[1])
    assert [c["block_n"] for c in small.seeds() if small.reject(c) is None] == [128, 128]
