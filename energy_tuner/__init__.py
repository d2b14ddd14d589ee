"""energy-tuner: an energy-aware tensor compiler for NVIDIA GPUs on Apache TVM.

Its subpackages are the source tree's top-level folders `compiler`, `costmodel`, `schedules` and
`measure`; setup.cfg installs them as `energy_tuner.compiler` and so on (package_dir), so no generic
top-level name is installed. Run from a checkout without installing (`PYTHONPATH=checkout`, as on the
GPU machine), this file adds the checkout to the package's path so that they import the same way.
"""
from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "compiler").is_dir() and (_checkout / "setup.cfg").is_file() \
        and (_checkout / "compiler" / "__init__.py").is_file():
    __path__.append(str(_checkout))
