"""``trainer.precision=auto``: bf16 autocast where the hardware runs bf16 natively, else fp32.

Lightning's ``bf16-mixed`` runs on any CPU, but only CPUs with AVX512-BF16 or AMX have
bf16 kernels; elsewhere oneDNN emulates them. Measured on a 2-core AMD EPYC with AVX2 only
(docs/training.md, "bf16 autocast"): a training step of the demo network took 37 s under
bf16 against 2.2 s in fp32. On a CPU with native bf16 the same autocast halved the epoch
time. So the demo asks for ``auto``, and this module turns it into the value Lightning
takes before the trainer is built; the run's config.yaml records the chosen value.
Lightning has no such value of its own (its ``precision`` must name one).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
BF16 = "bf16-mixed"
FP32 = "32-true"


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` puts the run on a CUDA GPU."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def native_bf16(accelerator: str) -> bool:
    """Whether the device ``accelerator`` selects has bf16 kernels (not emulated ones)."""
    if uses_cuda(accelerator):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # oneDNN's own check for AVX512-BF16 / AMX (private, but the one PyTorch itself uses to
    # decide the CPU bf16 fast paths; absent in a build without oneDNN).
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` where `native_bf16`, else ``32-true``; any other value is
    returned as it is, with a warning when it asks for bf16 that the CPU only emulates."""
    precision = str(precision)
    if precision == AUTO:
        chosen = BF16 if native_bf16(accelerator) else FP32
        log.info("trainer.precision=auto: %s (native bf16: %s)", chosen, chosen == BF16)
        return chosen
    if precision.startswith("bf16") and not native_bf16(accelerator):
        log.warning(
            "trainer.precision=%s: this device has no native bf16 kernels, so bf16 is "
            "emulated and may run many times slower than fp32; trainer.precision=auto "
            "picks fp32 here.",
            precision,
        )
    return precision
