"""What a database record is a measurement of, and how: the workload key.

Two records share a key only if they measured the same op instance on the same target and device
under the same measurement configuration (L2 policy, meter, energy protocol version and precision,
energy policy). Resume, trial budgets and selection read records by key, so they never mix
records measured differently: a `--l2 rotate` tune after a resident one measures anew.
"""
from __future__ import annotations

import hashlib
import json

import tvm
import tvm_ffi

from .target import Platform
from ..schedules import Op


def plain(value):
    """TVM containers (Map, Array, tuples) as plain JSON-able Python values."""
    if isinstance(value, (list, tuple, tvm_ffi.Array)):
        return [plain(v) for v in value]
    if isinstance(value, (dict, tvm_ffi.Map)):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tvm.target.Target):
        return plain(value.export())
    return value


def target_json(target: tvm.target.Target) -> str:
    """The target as JSON text (sorted keys), as the database stores it."""
    return json.dumps(plain(target), sort_keys=True)


def workload_key(op: Op, plat: Platform, config: dict) -> str:
    """Hash of op, target, device and the measurement configuration `config` (the runner's
    `measurement` plus the energy policy)."""
    ident = {"workload": op.describe(), "target": plain(plat.target), "device": plat.device_name,
             "measurement": config}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def measurement_config(measurement: dict, energy_policy: str) -> dict:
    """The runner's measurement identity plus the energy policy (which only matters with a meter)."""
    return {**measurement, "energy_policy": energy_policy} if measurement.get("meter") \
        else dict(measurement)
