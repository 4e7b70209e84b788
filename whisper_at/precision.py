"""The precision the tagging encoder computes in: ``at_compute_type``.

Shared by tagging only (``model.tag``, ``whisper-at tag``, ``whisper-at batch --task tag``) and
the faster-whisper backend's tagging encoder; ``transcribe`` (openai-whisper backend) always
encodes in the model's own precision. Imports torch only (not faster-whisper or CTranslate2).

``"auto"`` is float16 on CUDA, bfloat16 on a CPU that computes it natively (AVX512-BF16 or
AMX-BF16), float32 on other CPUs and devices. A lower precision than the weights' runs under
``torch.autocast`` (:func:`autocast_dtype`): the weights stay as they are, layer norms run in
float32, and the encoder's outputs are handed back in float32.
"""

from typing import FrozenSet, Optional

import torch

COMPUTE_TYPES = ("auto", "float32", "bfloat16", "float16")
# /proc/cpuinfo flags of native bfloat16 arithmetic on x86: AVX512-BF16 (Cooper Lake, Zen 4,
# Sapphire Rapids, ...) and AMX-BF16 (Sapphire Rapids and later)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_TORCH_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpuinfo_flags(cpuinfo: str) -> FrozenSet[str]:
    """The CPU feature flags listed in /proc/cpuinfo text (its ``flags`` lines, Linux x86)."""
    flags = set()
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def native_bfloat16(cpuinfo: Optional[str] = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    ``cpuinfo``: /proc/cpuinfo text to read the flags from. None: this machine, as torch's own
    checks see it (the CPU features its kernels dispatch on; any OS), or from /proc/cpuinfo
    with a torch that has no such checks."""
    if cpuinfo is None:
        checks = [getattr(torch.cpu, name, None) for name in _TORCH_CHECKS]
        checks = [check for check in checks if check is not None]
        if checks:
            return any(check() for check in checks)
        cpuinfo = _read_cpuinfo()
    return bool(cpuinfo_flags(cpuinfo) & BF16_CPU_FLAGS)


def check_compute_type(compute_type, name: str = "at_compute_type") -> str:
    """``compute_type`` if it is one of COMPUTE_TYPES, else a ValueError naming ``name``."""
    if not isinstance(compute_type, str) or compute_type not in COMPUTE_TYPES:
        raise ValueError(f"{name} must be one of {COMPUTE_TYPES}, got {compute_type!r}")
    return compute_type


def encoder_dtype(device: torch.device, compute_type: str = "auto",
                  native_bf16: Optional[bool] = None,
                  name: str = "at_compute_type") -> torch.dtype:  # fmt: skip
    """The dtype the tagging encoder computes in, for ``compute_type`` on ``device``.

    ``native_bf16``: whether the CPU computes bfloat16 natively (None: :func:`native_bfloat16`
    of this machine). float16 on a CPU is refused, with a ValueError naming ``name``."""
    check_compute_type(compute_type, name)
    device = torch.device(device)
    if compute_type == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type != "cpu":  # other accelerators (mps, ...): as transcribe
            return torch.float32
        if native_bf16 is None:
            native_bf16 = native_bfloat16()
        return torch.bfloat16 if native_bf16 else torch.float32
    if device.type == "cpu" and compute_type == "float16":
        raise ValueError(f"{name}='float16' needs CUDA; on CPU use 'bfloat16' or 'float32'")
    return getattr(torch, compute_type)


def autocast_dtype(compute: torch.dtype, weights: torch.dtype) -> Optional[torch.dtype]:
    """The dtype to autocast to when computing in ``compute`` with weights of ``weights``:
    ``compute`` if it is narrower, else None (the weights' own precision, no autocast)."""
    if compute.is_floating_point and compute.itemsize < weights.itemsize:
        return compute
    return None
