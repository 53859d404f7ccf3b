"""Where torch computes: the device a setting names on this machine, in words, and the record of
the machine a run was trained on."""

from __future__ import annotations

import os
import platform

import torch

from busi.config import DEVICES, check_choice
from busi.errors import BusiError


def resolve_device(name: str) -> torch.device:
    """``auto`` takes a CUDA GPU, then Apple's GPU, then the CPU; a named GPU must be present."""
    check_choice("device", name, DEVICES)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BusiError("CUDA was requested but no CUDA GPU is available: choose 'auto' or 'cpu'.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BusiError("Apple's GPU (mps) was requested but is not available here: choose 'auto' or 'cpu'.")
    return torch.device(name)


def describe_device(name: str = "auto") -> str:
    """Human-readable name of the device ``name`` resolves to on this machine."""
    device = resolve_device(name)
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    """The software and machine a run trains with, kept in its run folder."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
    }
