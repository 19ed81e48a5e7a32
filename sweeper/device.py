"""The device a run trains on: which one, how it is named, its precision, and the CPU's allocator.

Decided once per run from `trainer.device` and `trainer.precision`; the engine and the bench share it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys

import torch

from sweeper.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda' is invalid: no CUDA device is available here; "
                          "allowed values are auto, cpu")
    return torch.device(name)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_kept_freed_memory: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process for reuse; True where it now does.

    By default glibc maps every block of 32 MiB or more afresh and unmaps it when it is freed, and
    returns the heap's free top to the system: each training step at width 64 then writes about 1 GB
    of new pages, every page zeroed by the kernel on its first touch (200,000 page faults and 0.5 s of
    system time per step on 2 cores). Served from a heap that is never trimmed, the same blocks are
    reused step after step: 9-12 % less time per step at widths 16 and 64 on a 2-core CPU. The setting
    is for the whole process, which keeps its peak memory until it exits. Linux with glibc only; a
    user's own MALLOC_MMAP_MAX_ or MALLOC_TRIM_THRESHOLD_ takes precedence.
    """
    global _kept_freed_memory
    if _kept_freed_memory is None:
        _kept_freed_memory = False
        user_set = {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ)
        if sys.platform == "linux" and platform.libc_ver()[0] == "glibc" and not user_set:
            libc = ctypes.CDLL("libc.so.6")
            _kept_freed_memory = bool(libc.mallopt(_M_MMAP_MAX, 0)
                                      and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            log.debug("glibc malloc: freed memory is kept for reuse: %s", _kept_freed_memory)
    return _kept_freed_memory


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (none where there is no such file)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_info() -> dict:
    """The CPU by name and by the vector instructions PyTorch's kernels use here (AVX2, AVX512, ...),
    whether it has AMX tiles and native bf16 dot products (avx512_bf16): the same bench runs 4x apart
    on 2-core machines of different kinds."""
    fields = _cpuinfo()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private: absent from some releases
    return {"model": fields.get("model name") or platform.processor() or "unknown",
            "vendor": fields.get("vendor_id", "unknown"),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "amx": bool(amx and amx()), "avx512_bf16": "avx512_bf16" in fields.get("flags", "").split(),
            "onednn_max_cpu_isa": onednn_cap()}


# oneDNN's kernels can be capped at an instruction set (ONEDNN_MAX_CPU_ISA, or its older name
# DNNL_MAX_CPU_ISA); bf16 is fast only with the kernels that use the CPU's bf16 or AMX instructions
_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_BELOW_AMX = _BELOW_BF16 | {"AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16"}


def onednn_cap() -> str | None:
    """The instruction set oneDNN's kernels are capped at by the environment, or None."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast trains faster than fp32 on `device`: on CUDA GPUs with native bf16
    (Ampere and later); on CPUs with AMX (Intel's matrix tiles, which oneDNN's bf16 convolutions
    use: 2.4x per width-64 step); and on AMD CPUs with native bf16 dot products (avx512_bf16, Zen 4
    and later: 1.9x per width-64 step, oneDNN's bf16 convolutions twice as fast as its fp32 ones).
    Elsewhere it is slower: several times on AVX2 CPUs, 1.4-1.5x on the Intel CPU with avx512_bf16
    but no AMX that was measured (benchmarks/README.md), and where ONEDNN_MAX_CPU_ISA keeps oneDNN
    from those instructions (held to AVX2 on the AMD machine with avx512_bf16, a width-16 step took
    2.2 s in bf16 against 0.18 s in fp32)."""
    if device.type == "cuda":  # natively from Ampere on; emulated, and slow, before
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # a torch without the argument
            return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if amx_kernels():
        return True
    cpu = cpu_info()
    return cpu["vendor"] == "AuthenticAMD" and cpu["avx512_bf16"] and onednn_cap() not in _BELOW_BF16


def amx_kernels() -> bool:
    """Whether oneDNN's bf16 kernels use AMX here: the CPU has it, the kernel lets this process use
    it, and ONEDNN_MAX_CPU_ISA does not hold oneDNN below it."""
    # private functions (absent: unknown, so no AMX)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    usable = getattr(torch.cpu, "_init_amx", lambda: True)
    return amx is not None and bool(amx()) and bool(usable()) and onednn_cap() not in _BELOW_AMX


_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """trainer.precision as it trains on `device`: fp32, bf16 or fp16 (auto: bf16 where fast)."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    return _AUTOCAST[resolve_precision(precision, device)]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`, or nothing for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
