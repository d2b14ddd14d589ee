import sys, numpy as np, tvm
so = sys.argv[1]; m = n = k = 4096
f = tvm.runtime.load_module(so)["main"]
dev = tvm.cuda(0); rng = np.random.default_rng(0)
a = tvm.runtime.tensor(rng.uniform(-1, 1, (m, k)).astype("float16"), dev)
b = tvm.runtime.tensor(rng.uniform(-1, 1, (k, n)).astype("float16"), dev)
c = tvm.runtime.tensor(np.zeros((m, n), "float32"), dev)
for _ in range(3): f(a, b, c)
dev.sync()
