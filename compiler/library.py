"""A kernel library: the chosen kernels of a model (or a db) in one directory, and its loader.

Layout: one `<op>_<shape>_<dtype>.so` and `.json` per kernel (written by compiler/export.py) and
`manifest.json`: format, TVM version, host machine, every kernel's manifest (op, shape, dtypes,
argument shapes, target, device, objective, measured figures, db record id) and a sha256 per file.

`load(dir)` needs only the TVM runtime and torch (the compiler is imported only by the export
functions). It checks the TVM version, the device and every file's hash before loading anything,
then registers the ops as torch.library custom ops in the namespace `energy_tuner` (with fake
implementations, so torch.compile traces them):

    energy_tuner::matmul(a[m,k], b[k,n], out_dtype)        energy_tuner::gemv(w[n,k], x[k], out_dtype)
    energy_tuner::linear(x[m,k], w[n,k], out_dtype)        (y = x w^T, w as nn.Linear stores it)
    energy_tuner::batch_matmul(a[b,m,k], b[b,k,n], out_dtype)
    energy_tuner::conv2d(x[n,h,w,c] NHWC, w[r,s,c,k] RSCK, stride, pad, out_dtype)

A call runs the kernel held for its op, input shapes, dtypes and device, passing torch's memory
to TVM by DLPack (no copy; non-contiguous inputs are made contiguous first) and, on CUDA, on
torch's current stream. Any other call runs torch's equivalent and says so once per workload
(a `LibraryFallbackWarning`). `Library.serve(module)` swaps a module's nn.Linear layers for ones
that call these ops.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .graph import linear_task

FORMAT = 1
MANIFEST = "manifest.json"
LIBRARY_OPS = ("matmul", "batch_matmul", "gemv", "linear", "conv2d")


class LibraryError(RuntimeError):
    """A library that cannot be exported or loaded (missing, tampered, built for elsewhere)."""


class LibraryFallbackWarning(UserWarning):
    """A call the library holds no kernel for ran in torch instead."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- export (needs the compiler) --------------------------------------------------------------

def target_dict(text: str) -> dict:
    """A target as the db stores it: JSON (schema 1 and later; compiler/identity.py)."""
    return json.loads(text)


def export_library(kernels: list[tuple], objective: str, out_dir: str | Path
                   ) -> tuple[Path, list[str]]:
    """Write each (op, target, record) into out_dir and the manifest; returns the
    manifest's path and the ops left out (those the library has no custom op for)."""
    import tvm

    from .export import export_kernel

    out = Path(out_dir)
    entries, skipped = [], []
    for op, target, record in kernels:
        if op.name not in LIBRARY_OPS or set(op.params) - {"accum"}:
            skipped.append(f"{op.name} {op.shape_text()} {op.dtype}")
            continue
        path = export_kernel(op, target, record, objective, out)
        entry = json.loads(path.read_text())
        if any(e["library"] == entry["library"] for e in entries):
            raise LibraryError(f"two kernels would be written as {entry['library']}")
        entries.append({**entry, "manifest": path.name})
    files = sorted({e["library"] for e in entries} | {e["manifest"] for e in entries})
    manifest = {"format": FORMAT, "tvm_version": tvm.__version__, "machine": platform.machine(),
                "kernels": entries, "sha256": {f: sha256(out / f) for f in files}}
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out / MANIFEST, skipped


def db_kernels(db, objective, keys: list[str] | None = None) -> list[tuple]:
    """(op, target, record) of the record `objective` chooses for each workload in
    the db (`keys`: only these workloads); workloads with no such record are left out."""
    from tvm.target import Target

    from ..schedules import op_from_description

    out = []
    for key in db.workload_keys() if keys is None else keys:
        chosen = objective.choose(db.records(key))
        if chosen is None:
            continue
        op = op_from_description(chosen.workload)
        target = Target(target_dict(chosen.target))
        out.append((op, target, chosen))
    return out


# ---- the loader (needs only the TVM runtime and torch) ----------------------------------------

def _out_shape(op: str, shapes: list[tuple[int, ...]], stride: int = 1,
               pad: int = 0) -> tuple[int, ...]:
    a, b = shapes
    if op == "matmul":
        return a[0], b[1]
    if op == "batch_matmul":
        return a[0], a[1], b[2]
    if op == "gemv":
        return (a[0],)
    if op == "linear":
        return a[0], b[0]
    n, h, w, _ = a
    r, s, _, k = b
    return n, (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1, k


def torch_op(op: str, a, b, stride: int = 1, pad: int = 0):
    """torch's computation of one of our ops, in the inputs' dtype (torch's own accumulation)."""
    import torch
    import torch.nn.functional as F

    if op == "conv2d":
        return F.conv2d(a.permute(0, 3, 1, 2), b.permute(3, 2, 0, 1), stride=stride,
                        padding=pad).permute(0, 2, 3, 1)
    if op == "linear":
        return F.linear(a, b)
    return torch.mv(a, b) if op == "gemv" else torch.matmul(a, b)


@dataclass
class Kernel:
    op: str
    inputs: tuple[tuple[int, ...], ...]
    dtype: str
    out_dtype: str
    extra: tuple[int, ...]          # conv2d: (stride, pad)
    device_type: str                # torch's: "cpu" | "cuda"
    entry: dict                     # its manifest entry
    func: Any = None                # the loaded TVM function
    calls: int = 0                  # how often it has served a call

    @property
    def key(self) -> tuple:
        return self.op, self.inputs, self.dtype, self.out_dtype, self.extra, self.device_type

    def __call__(self, inputs: list):
        import torch
        import tvm
        import tvm_ffi

        self.calls += 1
        out = torch.empty(self.entry["arguments"][-1]["shape"], dtype=getattr(torch, self.out_dtype),
                          device=inputs[0].device)
        args = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
        args.append(tvm.runtime.from_dlpack(out))
        if self.device_type == "cuda":
            stream = torch.cuda.current_stream(out.device)
            with tvm_ffi.use_raw_stream(tvm_ffi.device(f"cuda:{out.device.index}"),
                                        stream.cuda_stream):
                self.func(*args)
        else:
            self.func(*args)
        return out


_KERNELS: dict[tuple, Kernel] = {}    # every loaded library's kernels, by dispatch key
_WARNED: set[tuple] = set()
_REGISTERED = False


def _key(op: str, inputs: list, extra: tuple[int, ...], out_dtype) -> tuple:
    """The dispatch key of a call (`Kernel.key`)."""
    dtypes = {str(t.dtype).removeprefix("torch.") for t in inputs}
    dtype = dtypes.pop() if len(dtypes) == 1 else "mixed"
    out = str(out_dtype).removeprefix("torch.")
    return op, tuple(tuple(t.shape) for t in inputs), dtype, out, extra, inputs[0].device.type


def _dispatch(op: str, inputs: list, extra: tuple[int, ...], out_dtype):
    """Run the held kernel for this call, else torch (warning once per workload)."""
    key = _key(op, inputs, extra, out_dtype)
    op, _, dtype, out, extra, _ = key
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel(inputs)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"energy_tuner library holds no {op} kernel for inputs "
                      f"{' x '.join(str(list(s)) for s in key[1])} {dtype}->{out} on "
                      f"{key[5]}; running torch's", LibraryFallbackWarning, stacklevel=3)
    return torch_op(op, *inputs, *extra).to(out_dtype)


def _register_ops() -> None:
    """Define the custom ops once per process; loaded libraries only add kernels."""
    global _REGISTERED
    if _REGISTERED:
        return
    import torch

    schemas = {"matmul": "(Tensor a, Tensor b, ScalarType out_dtype) -> Tensor",
               "batch_matmul": "(Tensor a, Tensor b, ScalarType out_dtype) -> Tensor",
               "gemv": "(Tensor w, Tensor x, ScalarType out_dtype) -> Tensor",
               "linear": "(Tensor x, Tensor w, ScalarType out_dtype) -> Tensor",
               "conv2d": "(Tensor x, Tensor w, int stride, int pad, ScalarType out_dtype) -> Tensor"}
    for op, schema in schemas.items():
        def run(a, b, *rest, op=op):
            *extra, out_dtype = rest
            return _dispatch(op, [a, b], tuple(extra), out_dtype)

        def fake(a, b, *rest, op=op):
            *extra, out_dtype = rest
            return a.new_empty(_out_shape(op, [tuple(a.shape), tuple(b.shape)], *extra),
                               dtype=out_dtype)

        torch.library.custom_op(f"energy_tuner::{op}", run, mutates_args=(),
                                schema=schema).register_fake(fake)
    _REGISTERED = True


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise LibraryError(f"{path}: cannot read {MANIFEST}: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LibraryError(f"{path}: not a kernel library of format {FORMAT}")
    return manifest


def _check_entry(path: Path, entry: dict) -> None:
    """The manifest's entry must say what the kernel's own (hashed) JSON file says."""
    own = json.loads((path / entry["manifest"]).read_text())
    if any(entry.get(k) != v for k, v in own.items()):
        raise LibraryError(f"{path}: {MANIFEST} disagrees with {entry['manifest']} "
                           "(modified after export)")


def _device_problem(entry: dict) -> str | None:
    """Why this machine cannot run the kernel, or None."""
    import torch

    target = entry["target"]
    if target["kind"] == "llvm":
        return None
    arch = str(target.get("arch", "")).rstrip("af")
    if not torch.cuda.is_available():
        return f"built for {entry['device']} ({arch}), but torch sees no CUDA GPU"
    here = "sm_{}{}".format(*torch.cuda.get_device_capability())
    if here != arch:
        return (f"built for {entry['device']} ({arch}), but this GPU is "
                f"{torch.cuda.get_device_name()} ({here})")
    return None


def _kernel(path: Path, entry: dict) -> Kernel:
    import tvm

    args = [tuple(int(d) for d in a["shape"]) for a in entry["arguments"]]
    shape = entry["shape"]
    kind = "cuda" if entry["target"]["kind"] == "cuda" else "cpu"
    kernel = Kernel(entry["op"], tuple(args[:-1]), entry["dtype"], entry["output_dtype"],
                    (shape["stride"], shape["pad"]) if entry["op"] == "conv2d" else (), kind, entry)
    try:
        kernel.func = tvm.runtime.load_module(str(path / entry["library"]))[entry["function"]]
    except Exception as err:  # TVM raises its own error types for unloadable modules
        raise LibraryError(f"{path / entry['library']}: cannot load: {err}") from None
    return kernel


def load(path: str | Path) -> "Library":
    """Verify and load a library directory and make its kernels serve the custom ops."""
    import tvm

    path = Path(path)
    manifest = _read_manifest(path)
    if manifest.get("tvm_version") != tvm.__version__:
        raise LibraryError(f"{path}: built with TVM {manifest.get('tvm_version')}, "
                           f"this is TVM {tvm.__version__}")
    if manifest.get("machine") != platform.machine():
        raise LibraryError(f"{path}: built on {manifest.get('machine')}, this is "
                           f"{platform.machine()}")
    try:
        listed = {e["library"] for e in manifest["kernels"]} | {e["manifest"] for e in manifest["kernels"]}
        hashes = manifest["sha256"]
    except (KeyError, TypeError) as err:
        raise LibraryError(f"{path}: malformed {MANIFEST} ({err})") from None
    if unhashed := sorted(listed - set(hashes)):
        raise LibraryError(f"{path}: {unhashed[0]} has no sha256 in {MANIFEST}")
    for name, digest in sorted(hashes.items()):
        file = path / name
        if not file.is_file() or Path(name).name != name:
            raise LibraryError(f"{path}: {name} is missing")
        if sha256(file) != digest:
            raise LibraryError(f"{path}: {name} does not match its sha256 in {MANIFEST} "
                               "(modified after export)")
    for entry in manifest["kernels"]:
        _check_entry(path, entry)
        if (problem := _device_problem(entry)) is not None:
            raise LibraryError(f"{path}: {entry['library']} {problem}")
    kernels = [_kernel(path, entry) for entry in manifest["kernels"]]
    _register_ops()
    for kernel in kernels:
        _KERNELS[kernel.key] = kernel
    return Library(path, manifest, kernels)


@dataclass
class Library:
    path: Path
    manifest: dict
    kernels: list[Kernel]

    def out_dtype(self, op: str, inputs: list[tuple[int, ...]], dtype: str) -> str:
        """The output dtype of the kernel held for these inputs (float32 if there is none)."""
        for k in self.kernels:
            if (k.op, k.inputs, k.dtype) == (op, tuple(map(tuple, inputs)), dtype):
                return k.out_dtype
        return "float32"

    def serve(self, module) -> int:
        """Replace every nn.Linear inside `module` by a `LibraryLinear`; returns how many.
        To serve parallel linears as one wider kernel, serve `merge.merge_linears(module)`
        (a new module: merging is a separate rewrite, serving swaps layers in place)."""
        import torch

        count = 0
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, linear_class()(child, self))
                count += 1
            else:
                count += self.serve(child)
        return count


@functools.cache
def linear_class() -> type:
    """`LibraryLinear`, defined on first use so that importing this module needs no torch."""
    import torch

    class LibraryLinear(torch.nn.Module):
        """An nn.Linear computed by the library's ops (`graph.linear_task` picks gemv, linear
        or matmul); the weight is also kept transposed (k x n) for matmul. Output in x's dtype."""

        def __init__(self, linear: torch.nn.Linear, library: Library) -> None:
            super().__init__()
            self.weight, self.bias, self.library = linear.weight, linear.bias, library
            self.register_buffer("weight_t", linear.weight.detach().t().contiguous(),
                                 persistent=False)
            self.plans: dict[tuple, tuple] = {}   # per input signature: (op, out dtype, kernel)

        def operands(self, x: torch.Tensor, op: str) -> tuple[torch.Tensor, torch.Tensor]:
            k = x.shape[-1]
            if op == "gemv":
                return self.weight.detach(), x.reshape(k)
            return x.reshape(-1, k), self.weight.detach() if op == "linear" else self.weight_t

        def plan(self, x: torch.Tensor) -> tuple:
            """(op, out dtype, held kernel or None) for inputs like x, worked out once."""
            sig = (x.shape, x.dtype, x.device.type)
            if sig not in self.plans:
                dtype = str(x.dtype).removeprefix("torch.")
                op = linear_task(math.prod(x.shape[:-1]), self.weight.shape[0], x.shape[-1], dtype)[0]
                a, b = self.operands(x, op)
                out_dtype = self.library.out_dtype(op, [tuple(a.shape), tuple(b.shape)], dtype)
                self.plans[sig] = op, out_dtype, _KERNELS.get(_key(op, [a, b], (), out_dtype))
            return self.plans[sig]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            op, out_dtype, kernel = self.plan(x)
            a, b = self.operands(x, op)
            if kernel is not None and not torch.compiler.is_compiling():
                y = kernel([a, b])     # eager: the held kernel, without the dispatcher's cost
            else:                      # traced, or not held (torch's, said once)
                y = getattr(torch.ops.energy_tuner, op)(a, b, getattr(torch, out_dtype))
            y = y.reshape(*x.shape[:-1], self.weight.shape[0]).to(x.dtype)
            return y if self.bias is None else y + self.bias

    return LibraryLinear
