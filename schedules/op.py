"""The operator interface and the registry that parses user input into an operator.

An op declares its shape keys, its input shapes and its TE compute; the base class derives the
PrimFunc, random inputs, bytes moved and the output description from those. Ops accumulate and
store in float32, except matmul and batch_matmul with the `accum=float16` option.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from tvm import te, tirx

try:
    import ml_dtypes  # noqa: F401  registers numpy's "bfloat16" (inputs of the dense products)
except ImportError:  # a machine without it (TVM's own use of it is optional too): no bfloat16
    ml_dtypes = None


FEW_ROWS = 16   # a product of at most this many rows reads its weights once per call, as decode does


class OpError(ValueError):
    """Bad operator input from the user (unknown op, malformed shape, unsupported dtype)."""


class Op(ABC):
    """One operator instance: a fixed shape and dtype, its TE definition and its numpy reference."""

    name: ClassVar[str]
    dtypes: ClassVar[tuple[str, ...]] = ("float16", "float32")
    shape_keys: ClassVar[tuple[str, ...]]
    shape_defaults: ClassVar[dict[str, int]] = {}
    may_be_zero: ClassVar[tuple[str, ...]] = ()  # shape keys that may be 0 (e.g. padding)
    positional: ClassVar[bool] = False          # "--shape 64,64,64" allowed besides key=value
    default_shape: ClassVar[dict[str, str]]     # per target kind ("cuda", "llvm")
    output_dtype: ClassVar[str] = "float32"
    tolerance: ClassVar[float] = 1e-4           # relative Frobenius error ||out - ref|| / ||ref||
    error_constant: ClassVar[float] = 1.0       # c of the element-wise bound (`error_bound`)
    param_defaults: ClassVar[dict[str, object]] = {}  # op options besides the shape (e.g. wbits)
    options: ClassVar[tuple[str, ...]] = ()     # further options, part of the identity only if given

    def __init__(self, shape: dict[str, int], dtype: str, params: dict | None = None) -> None:
        self.shape = shape
        self.dtype = dtype
        self.params = {**self.param_defaults, **(params or {})}

    @property
    def input_dtypes(self) -> list[str]:
        return [self.dtype] * len(self.input_shapes)

    @property
    @abstractmethod
    def input_shapes(self) -> list[tuple[int, ...]]: ...

    @property
    @abstractmethod
    def output_shape(self) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def flops(self) -> int: ...

    @abstractmethod
    def compute(self, *inputs: te.Tensor) -> te.Tensor:
        """The TE definition of the output from placeholders of `input_shapes`."""

    @abstractmethod
    def reference(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The expected output, computed by numpy in at least float32."""

    @property
    @abstractmethod
    def reduction_length(self) -> int:
        """Products summed into each output element (k of a matmul)."""

    @property
    def accumulation_dtype(self) -> str:
        """The dtype the sums are accumulated in (the output's, for every op here)."""
        return self.output_dtype

    @property
    def streams_weights(self) -> bool:
        """Whether a call reads its weights once with little reuse (a GEMV, a product of at most
        FEW_ROWS rows), as a decoding step reads each layer's weights from DRAM: `--l2 auto`
        measures such ops with their inputs rotated out of L2."""
        return False

    def magnitude(self, inputs: list[np.ndarray]) -> np.ndarray:
        """(|A||B|)ij: the sum of the products' magnitudes per output element, here the reference
        on the inputs' absolute values (right for every op whose output is a sum of products)."""
        return self.reference([np.abs(x) for x in inputs])

    def error_bound(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Element-wise bound on |out - ref|: c * u * sqrt(k) * (|A||B|)ij with u the unit roundoff
        of the accumulation dtype, the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput.
        41(5), 2019) at lambda = c = 1. On these zero-mean random inputs the partial sums grow as
        sqrt(j), not j, so correct kernels stay far inside it (float16 summed one product at a
        time, m x 512 x 4096: 0.05 of the bound); a zeroed row or a flipped tile does not."""
        unit = float(np.finfo(self.accumulation_dtype).eps) / 2
        scale = self.error_constant * unit * math.sqrt(self.reduction_length)
        return (scale * self.magnitude(inputs)).astype("float32") + np.finfo("float32").tiny

    def validate(self) -> None:
        """Raise OpError for a shape the op cannot compute (beyond every value being positive)."""

    def prim_func(self) -> tirx.PrimFunc:
        """The TE compute as a schedulable PrimFunc named `main` (inputs..., output)."""
        names = "ABCDEFGH"
        placeholders = [te.placeholder(s, d, name=names[i])
                         for i, (s, d) in enumerate(zip(self.input_shapes, self.input_dtypes))]
        out = self.compute(*placeholders)
        return te.create_prim_func([*placeholders, out]).with_attr("global_symbol", "main")

    def inputs(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Uniform random inputs in [-1, 1] (never all ones or zeros) in the op's dtype."""
        return [rng.uniform(-1.0, 1.0, s).astype(self.dtype) for s in self.input_shapes]

    @property
    def bytes_moved(self) -> int:
        """Fewest bytes through device memory: each input read once, the output written once."""
        return (sum(math.prod(s) * np.dtype(d).itemsize
                    for s, d in zip(self.input_shapes, self.input_dtypes))
                + math.prod(self.output_shape) * np.dtype(self.output_dtype).itemsize)

    def describe(self) -> dict:
        """JSON-able identity of this op instance."""
        desc = {"op": self.name, "shape": dict(self.shape), "dtype": self.dtype,
                "output_dtype": self.output_dtype}
        return {**desc, "params": dict(self.params)} if self.params else desc

    def shape_text(self) -> str:
        return ",".join(f"{k}={self.shape[k]}" for k in self.shape_keys) if not self.positional \
            else ",".join(str(self.shape[k]) for k in self.shape_keys)


OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    OPS[cls.name] = cls
    return cls


def _size(key: str, text: str, whole: str, cls: type[Op]) -> int:
    """A shape value: a positive integer, or non-negative for the op's `may_be_zero` keys."""
    digits = text.isascii() and text.isdigit()
    if key.lower() in cls.may_be_zero:
        if not digits:
            raise OpError(f"shape {whole!r}: {key} must be a non-negative integer, got {text!r}")
    elif not digits or int(text) < 1:
        raise OpError(f"shape {whole!r}: {key} must be a positive integer, got {text!r}")
    return int(text)


def parse_shape(text: str, cls: type[Op]) -> dict[str, int]:
    """`key=value` pairs (lowercase keys of the op), or positional values where the op allows."""
    parts = [p.strip() for p in text.split(",")]
    keys = cls.shape_keys
    if all("=" not in p for p in parts) and cls.positional:
        if len(parts) != len(keys):
            raise OpError(f"shape {text!r} must have {len(keys)} comma-separated values "
                          f"({','.join(k.upper() for k in keys)})")
        return {k: _size(k.upper(), p, text, cls) for k, p in zip(keys, parts)}
    values = dict(cls.shape_defaults)
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in keys:
            raise OpError(f"shape {text!r}: expected key=value pairs with keys "
                          f"{', '.join(keys)}, got {part!r}")
        values[key] = _size(key, value, text, cls)
    missing = [k for k in keys if k not in values]
    if missing:
        raise OpError(f"shape {text!r} lacks {', '.join(missing)} (keys: {', '.join(keys)})")
    return {k: values[k] for k in keys}


def make_op(name: str, shape_text: str, dtype: str, params: dict | None = None) -> Op:
    """Build an op from user input, raising OpError with a one-line message when it is bad."""
    if name not in OPS:
        raise OpError(f"unknown op {name!r} (known: {', '.join(sorted(OPS))})")
    cls = OPS[name]
    if dtype not in cls.dtypes:
        raise OpError(f"op {name} does not support dtype {dtype!r} (supported: {', '.join(cls.dtypes)})")
    if dtype == "bfloat16" and ml_dtypes is None:
        raise OpError("bfloat16 needs the ml-dtypes package (pip install ml-dtypes)")
    known = [*cls.param_defaults, *cls.options]
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        raise OpError(f"op {name} has no option {', '.join(unknown)}"
                      + (f" (options: {', '.join(known)})" if known else ""))
    op = cls(parse_shape(shape_text, cls), dtype, params)
    op.validate()
    return op


def op_from_description(desc: dict) -> Op:
    """Rebuild an op from `Op.describe()` output (e.g. in a worker process)."""
    cls = OPS[desc["op"]]
    return cls({k: int(desc["shape"][k]) for k in cls.shape_keys}, desc["dtype"], desc.get("params"))
