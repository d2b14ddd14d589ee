"""The workload key: what a record measured, and how (compiler/identity.py)."""
import json

from energy_tuner.compiler.identity import measurement_config, target_json, workload_key
from energy_tuner.compiler.target import resolve
from energy_tuner.measure.protocol import Precision
from energy_tuner.measure.runner import MeasureConfig, measurement_identity
from energy_tuner.schedules import make_op

OP = make_op("matmul", "64,64,64", "float32")
PLAT = resolve("llvm")


def key(config=MeasureConfig(), meter="rapl", policy="all", op=OP):
    return workload_key(op, PLAT, measurement_config(measurement_identity(config, meter), policy))


def test_every_part_of_the_measurement_configuration_changes_the_key():
    base = key()
    assert key() == base
    variants = [key(MeasureConfig(l2="rotate")), key(meter="nvml"), key(meter=None),
                key(policy="dynamic"), key(MeasureConfig(precision=Precision(target_rse=0.01))),
                key(op=make_op("matmul", "64,64,32", "float32"))]
    assert len({base, *variants}) == len(variants) + 1


def test_without_a_meter_the_energy_settings_do_not_matter():
    strict = MeasureConfig(precision=Precision(max_windows=9))
    assert key(meter=None) == key(strict, meter=None, policy="dynamic")
    assert key(MeasureConfig(latency_repeats=3), meter=None) == key(meter=None)  # noise only


def test_target_is_stored_as_json():
    stored = json.loads(target_json(PLAT.target))
    assert stored["kind"] == "llvm" and stored["keys"] == ["cpu"]
