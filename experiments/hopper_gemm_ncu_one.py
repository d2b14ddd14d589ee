"""Three calls of an exported 4096^3 fp16->fp32 kernel, for Nsight Compute to profile the third:

    ncu --clock-control none --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        python experiments/hopper_gemm_ncu_one.py KERNEL.so
"""
import sys

import numpy as np
import tvm

m = n = k = 4096
f = tvm.runtime.load_module(sys.argv[1])["main"]
dev = tvm.cuda(0)
rng = np.random.default_rng(0)
a = tvm.runtime.tensor(rng.uniform(-1, 1, (m, k)).astype("float16"), dev)
b = tvm.runtime.tensor(rng.uniform(-1, 1, (k, n)).astype("float16"), dev)
c = tvm.runtime.tensor(np.zeros((m, n), "float32"), dev)
for _ in range(3):
    f(a, b, c)
dev.sync()
