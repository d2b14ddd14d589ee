"""Do static shared memory / occupancy / wave features help the models? (recorded H200 data)"""
import math, subprocess, sys
import numpy as np, tvm, tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.stmt import SBlock
from experiments.model_quality import workloads, featurize, evaluate
from costmodel.features import launch_shape

PASSES = tvm.transform.Sequential([
    s_tir.transform.CanonicalizeLoop(), s_tir.transform.LowerCrossThreadReduction(),
    s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
    s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.LiftThreadBinding(),
    s_tir.transform.ManifestSharedMemoryLocalStage(), s_tir.transform.CompactBufferAllocation(),
    s_tir.transform.LowerAutoCopy(), s_tir.transform.UnifyThreadBinding(),
    s_tir.transform.LowerMatchBuffer(), s_tir.transform.StmtSimplify()])
SMS, SMEM_SM, THREADS_SM = 132, 228 * 1024, 2048

def extra(sch_mod):
    grid, block, _ = launch_shape(sch_mod["main"])
    low = PASSES(sch_mod)
    shared = [0]; local = [0]
    def on_block(b):
        for buf in b.alloc_buffers:
            size = math.prod(int(x) for x in buf.shape) * tvm.runtime.DataType(buf.dtype).bits // 8
            if buf.scope().startswith("shared"): shared[0] += size
            elif buf.scope() in ("local", "wmma.accumulator", "m16n8k8.matrixC") or buf.scope().startswith("wmma") or buf.scope().startswith("m16"): local[0] += size
    tvm_ffi.structural_walk(low["main"].body, [(SBlock, on_block)])
    per_sm = min(32, THREADS_SM // max(block, 1), SMEM_SM // max(shared[0], 1))
    per_sm = max(per_sm, 1)
    waves = grid / (SMS * per_sm)
    eff = waves / math.ceil(waves)
    return [math.log(shared[0] + 1), math.log(local[0] / max(block, 1) + 1), math.log(per_sm), math.log(waves), eff]

paths = subprocess.check_output("find experiments/results -name '*.sqlite.gz' | sort", shell=True, text=True).split()
for key, records in sorted(workloads(paths).items()):
    if len(records) < 30: continue
    op, x = featurize(records)
    import tvm as _t
    mods = []
    from tvm.s_tir import meta_schedule as ms
    mod = _t.IRModule({"main": op.prim_func()})
    ex = []
    for r in records:
        sch = _t.s_tir.Schedule(mod); _t.s_tir.schedule.Trace.apply_json_to_schedule(r.trace, sch)
        ex.append(extra(sch.mod))
    ex = np.array(ex, dtype=np.float32)
    lat = np.array([r.latency_s for r in records]); energy = np.array([r.energy_j for r in records])
    base = evaluate(x, lat, energy, True, True)
    # insert extra features before the trailing 6 kernel features (evaluate strips last 6 if not kernel)
    x2 = np.concatenate([x, ex], axis=1)
    new = evaluate(x2, lat, energy, True, True)
    print(f"\n{key}: {len(records)}")
    for name in base:
        b, n = base[name], new[name]
        print(f"  {name:28s} rho {b[0]:.3f}->{n[0]:.3f}  MAPE {b[1]:.1%}->{n[1]:.1%}  top rho {b[2]:.2f}->{n[2]:.2f} topMAPE {b[3]:.1%}->{n[3]:.1%} regret {b[4]:.1%}->{n[4]:.1%}")
