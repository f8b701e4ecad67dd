"""Choosing the device and the numeric precision: the one place where ``auto`` becomes a choice.

Every command resolves ``--device`` here, so ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` mean the
same thing everywhere, and a device this machine lacks is refused before any work starts.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch

DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """A ``--device`` or ``--precision`` value that is unknown, or names hardware this machine lacks."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if not DEVICE_NAME.fullmatch(name):
        raise DeviceError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """bf16 autocast on CUDA and on CPUs with native bf16 matrix units, float32 elsewhere."""
    if name not in ("auto", "fp32", "bf16"):
        raise DeviceError(f"--precision must be auto, fp32 or bf16, got {name!r}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX or AVX512-BF16).

    oneDNN reports bf16 as "supported" on any AVX-512 CPU, where it is emulated: bf16 autocast there
    measured 3.6x slower than float32 (LSTM 2x512 training, one thread, Xeon without AMX).
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return False
    found = capabilities()
    return bool(found.get("amx_bf16") or found.get("avx512_bf16"))


@lru_cache(maxsize=None)
def cpu_trains_in_bf16(cell: str) -> bool:
    """Whether this CPU's kernels can train the recurrent ``cell`` under bf16 autocast.

    oneDNN has no bfloat16 LSTM kernel on CPUs without AVX-512 (an AVX2 EPYC, say): there the first
    training step would fail deep inside torch, so ``--precision bf16`` is tried on a tiny cell first."""
    from lm.model import CELLS

    with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the training's seed alone
        rnn = CELLS[cell](8, 8, batch_first=True)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output, _ = rnn(torch.randn(2, 3, 8))
            output.float().sum().backward()
        except RuntimeError:
            return False
    return True


def check_training_precision(name: str, device: torch.device, cell: str) -> None:
    """Refuse ``--precision bf16`` before any work where this machine cannot train ``cell`` in it."""
    if resolve_precision(name, device) == "bf16" and device.type == "cpu" and not cpu_trains_in_bf16(cell):
        raise DeviceError(
            f"--precision bf16: this CPU has no bfloat16 kernel for the {cell.upper()} cell "
            "(oneDNN needs AVX-512 for it); use --precision fp32 or auto"
        )
