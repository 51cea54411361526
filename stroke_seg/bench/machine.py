"""The machine the benchmark runs on: device choice, memory readings, and the matmul peak
that the training step's FLOP rate is compared with."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_gb(path: str, field: str) -> float:
    """The ``field: N kB`` line of a /proc file in GB; nan where unavailable (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return math.nan


def rss_gb() -> float:
    """Current resident set size of this process (GB), from /proc; nan where unavailable."""
    return _proc_gb("/proc/self/status", "VmRSS:")


def max_rss_gb() -> float:
    """Peak resident set size of this process so far (GB; ru_maxrss is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def available_memory_gb() -> float:
    """Memory the kernel can give without swapping (GB), from /proc; nan where unavailable."""
    return _proc_gb("/proc/meminfo", "MemAvailable:")


def memory_limit(device: torch.device) -> int | None:
    """On CPU, cap a probe's data segment at 90% of the memory free now."""
    if device.type != "cpu":
        return None
    free = available_memory_gb()
    return None if math.isnan(free) else int(free * 0.9e9)


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_available_gb": round(available_memory_gb(), 1),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
    return info


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(device: torch.device, quick: bool) -> dict[str, Any]:
    """FLOP/s of a large square ``torch.mm`` (best of several), per dtype: the machine's
    practical peak against which the training step's FLOP rate is compared."""
    n = 256 if quick else (8192 if device.type == "cuda" else 4096)
    out: dict[str, Any] = {"n": n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        try:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            torch.mm(a, b)  # warm-up
            seconds = best_time(lambda a=a, b=b: torch.mm(a, b), device, 3 if quick else 5)
            out[f"{name}_flops"] = 2 * n**3 / seconds
        except RuntimeError as err:
            out[f"{name}_flops"] = None
            out[f"{name}_error"] = str(err).splitlines()[0]
    if device.type == "cuda":
        # The GPU's fp32 matmuls run on TF32 tensor cores only when allowed; say which.
        out["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def combine_peaks(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The better of two peak measurements per dtype (a busy machine lowers one of them),
    keeping both for the record."""
    out = {**start, "start": start, "end": end}
    for key in ("fp32_flops", "bf16_flops"):
        values = [v for v in (start.get(key), end.get(key)) if v]
        out[key] = max(values) if values else None
    return out


def flop_fraction(row: dict, peak: dict) -> dict[str, Any]:
    """Achieved FLOP/s over the matmul peak of the step's arithmetic (bf16 for bf16)."""
    bf16 = row["option"] == "bf16"
    ref = peak.get("bf16_flops") if bf16 else peak.get("fp32_flops")
    return {
        "peak_reference": "bf16 matmul" if bf16 else "fp32 matmul",
        "flop_fraction_of_peak": row["achieved_flops"] / ref if ref else math.nan,
    }
