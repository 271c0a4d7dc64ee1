"""Importing `wids` without PyTorch.

wids imports `torch.distributed` (for its distributed sampler) and takes `Dataset`/`Sampler`
base classes from `torch.utils.data` at import time, although reading shards needs neither.
`import_wids()` gives it minimal stand-ins for that import only, then removes them from
`sys.modules`, so nothing else in the process sees a fake torch; with torch installed it is a
plain import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def import_wids() -> Any:
    if "wids" in sys.modules or importlib.util.find_spec("torch") is not None:
        return importlib.import_module("wids")

    class Dataset(Generic[T]):
        pass

    class Sampler(Generic[T]):
        pass

    torch = types.ModuleType("torch")
    distributed = types.ModuleType("torch.distributed")
    distributed.is_initialized = lambda: False  # type: ignore[attr-defined]
    utils = types.ModuleType("torch.utils")
    data = types.ModuleType("torch.utils.data")
    data.Dataset = Dataset  # type: ignore[attr-defined]
    data.Sampler = Sampler  # type: ignore[attr-defined]
    stand_ins = {
        "torch": torch,
        "torch.distributed": distributed,
        "torch.utils": utils,
        "torch.utils.data": data,
    }
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("wids")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
