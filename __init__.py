"""nntrace: see a neural network think.

The public API, loaded on first use so that `import nntrace` (and `nntrace --help`) stays light::

    from nntrace import load_scratch
    model = load_scratch("model.keras")          # or a scratch `.npz`
    probabilities = model.predict(x)
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name → the module that defines it
_API = {
    "load_scratch": "nntrace.models.scratch",
    "CNNFromScratch": "nntrace.models.scratch",
    "RNNFromScratch": "nntrace.models.scratch",
    "LSTMFromScratch": "nntrace.models.scratch",
    "ScratchModel": "nntrace.models.scratch",
    "trace": "nntrace.tracer.trace",
    "Trace": "nntrace.tracer.trace",
    "NNTraceError": "nntrace.layers.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nntrace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
