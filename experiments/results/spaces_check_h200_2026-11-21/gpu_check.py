"""On the GPU: build, check and time candidates of the new CUDA spaces (and the old rule sets)."""
import json, os, re, sys, tempfile, time
import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target
import tvm.s_tir.tensor_intrin  # noqa
from compiler.builder import Builder, compile_module
from compiler.target import opt_in_shared_memory
from schedules import design_space, make_op

dev = tvm.cuda(0)
base = Target.from_device(dev)
T = opt_in_shared_memory(base)
print("from_device:", base.export()); print("target:", T.export(), flush=True)
OUT = os.environ.get("OUT", "/tmp")
results = []

def kind_of(s):
    m = re.search(r'auto_tensorize", ann_val="(\w+)"', str(s.trace))
    return m.group(1) if m else "simt"

def samples(op, space, per_space, max_tries=400):
    ctx = ms.TuneContext(mod=tvm.IRModule({"main": op.prim_func()}), target=T, space_generator=space,
                         num_threads=1, rand_state=0)
    out = []
    for sp in ctx.generate_design_space():
        got, seed = 0, 0
        while got < per_space and seed < max_tries:
            seed += 1
            sch = tvm.s_tir.Schedule(ctx.mod, seed=seed)
            tvm.s_tir.Trace(sp.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
            sch.enter_postproc()
            if all(p.apply(sch) for p in ctx.space_generator.postprocs):
                out.append(sch); got += 1
    return out

def run(op, label, schs, number, repeat, async_copy=False, builder=None):
    rng = np.random.default_rng(0)
    inputs = op.inputs(rng)
    ref = op.reference(inputs)
    args = [tvm.runtime.tensor(x, dev) for x in inputs] + [tvm.runtime.tensor(np.zeros(op.output_shape, "float32"), dev)]
    if builder is not None:
        built = list(builder.build([s.mod for s in schs]))
    for i, s in enumerate(schs):
        rec = {"op": op.describe(), "space": label, "kind": kind_of(s), "async_copy": async_copy}
        try:
            t = time.perf_counter()
            if builder is not None:
                if built[i].artifact is None:
                    raise RuntimeError("build: " + built[i].error)
                f = tvm.runtime.load_module(built[i].artifact)
            else:
                with tvm.transform.PassContext(config={"tirx.use_async_copy": async_copy}):
                    f = compile_module(s.mod, T).mod
            rec["build_s"] = round(time.perf_counter() - t, 2)
            args[-1] = tvm.runtime.tensor(np.full(op.output_shape, np.nan, "float32"), dev)
            f["main"](*args); dev.sync()
            out = args[-1].numpy()
            rec["rel_err"] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
            rec["latency_us"] = float(np.median(f.time_evaluator("main", dev, number=number, repeat=repeat)(*args).results) * 1e6)
            rec["tflops"] = op.flops / rec["latency_us"] / 1e6
            rec["gbps"] = op.bytes_moved / rec["latency_us"] / 1e3
        except Exception as e:
            rec["error"] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)
        results.append(rec); print(json.dumps(rec), flush=True)

def old(kind):
    return ms.space_generator.PostOrderApply(sch_rules=kind, postprocs=kind, mutator_probs=kind)

which = sys.argv[1:]
with tempfile.TemporaryDirectory() as tmp:
    b = Builder(T, tmp, workers=16)
    if "gemv" in which:
        op = make_op("gemv", "16384,4096", "float16")
        run(op, "new", samples(op, design_space(op, T), 48), 200, 5, builder=b)
        run(op, "old-cuda", samples(op, old("cuda"), 4, 200), 20, 3, builder=b)
        op = make_op("matmul", "1,4096,4096", "float16")
        run(op, "new", samples(op, design_space(op, T), 24), 200, 5, builder=b)
    if "mma" in which:
        op = make_op("matmul", "4096,4096,4096", "float16")
        schs = samples(op, design_space(op, T), 8)
        mma = [s for s in schs if kind_of(s).startswith("mma")]
        run(op, "new", schs, 10, 3, builder=b)                # the tuner's build path
        run(op, "new", mma, 10, 3, async_copy=True)            # with cp.async
    if "simt" in which:
        op = make_op("matmul", "1024,1024,1024", "float32")
        run(op, "new", samples(op, design_space(op, T), 4), 10, 3, builder=b)
    b.close()
json.dump(results, open(f"{OUT}/results_{'_'.join(which)}.json", "w"), indent=1)
