"""Which numeric precision a run uses: ``"auto"`` picks bf16 where the hardware computes it natively.

``"auto"`` resolves to bf16 autocast with channels_last inputs on CUDA with
bf16 support (fp16 with a ``GradScaler`` on older GPUs) and on a CPU whose
flags include ``avx512_bf16`` or ``amx_bf16``; fp32 elsewhere. It is a
measurement, not a preference: on an AVX2-only CPU oneDNN emulates bf16 and
a WRN step runs 3.5–5× *slower* than in fp32, on AVX512-BF16 / AMX CPUs
bf16 is faster (``docs/benchmarks.md``, ``benchmarks/precision.py``).

For scoring (BlockSwap's Fisher potential, ``purpose="score"``) ``"auto"``
also needs the ranking to survive bf16: the benchmark's Spearman ρ between
fp32 and bf16 Fisher potentials over ≥ 100 plans at batch 128 must reach
0.98 (:data:`SCORING_RHO`: 0.998 over 120 plans on a Sapphire Rapids Xeon).

The CPU's flags come from ``/proc/cpuinfo``; without it (macOS, Windows)
from ``torch.backends.cpu.get_cpu_capability()``, which names the vector
width only (``"AVX512"``, ``"AVX2"``): that is not enough to know bf16 is
native, so ``auto`` stays fp32 there and says so.

>>> p = resolve_precision("auto", "cpu", flags={"avx2", "fma"})
>>> p.name, p.dtype, p.reason
('fp32', torch.float32, 'auto: this CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, 3.5-5x slower than fp32)')
>>> resolve_precision("auto", "cpu", flags={"avx512f", "amx_bf16"}).describe()
'bf16 + channels_last (auto: CPU flag amx_bf16)'
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import FxswapError

__all__ = ["Precision", "PrecisionError", "resolve_precision", "amp_precision", "cpu_flags", "PRECISIONS", "NATIVE_BF16_FLAGS",
           "SCORING_RHO"]

#: the values ``precision=`` accepts
PRECISIONS = ("auto", "fp32", "bf16")

#: CPU flags (``/proc/cpuinfo``) under which oneDNN computes bf16 natively
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

#: Spearman ρ of fp32 vs bf16 Fisher potentials measured by ``benchmarks/precision.py`` on a CPU with
#: native bf16 (None: not measured); ``auto`` scores in bf16 only when it is at least 0.98. 0.9978: 120
#: WRN-16-2 plans at batch 128 on a Sapphire Rapids Xeon (AMX-BF16), same best plan (docs/benchmarks.md)
SCORING_RHO: float | None = 0.9978


class PrecisionError(FxswapError, ValueError):
    """A ``precision=`` value fxswap does not know, or bf16 asked for where the device cannot run it."""


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (``"fp32"``, ``"bf16"`` or ``"fp16"``), the autocast ``dtype``
    (``torch.float32``: no autocast), whether inputs go ``channels_last``, whether a ``GradScaler``
    is needed (fp16), and the ``reason`` it was chosen.

    >>> p = Precision("bf16", torch.bfloat16, True, "asked for")
    >>> p.amp, p.describe()
    (True, 'bf16 + channels_last (asked for)')
    >>> with p.autocast("cpu"):
    ...     torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype
    torch.bfloat16
    """

    name: str
    dtype: torch.dtype
    channels_last: bool
    reason: str
    scaler: bool = False

    @property
    def amp(self) -> bool:
        """Whether the forward runs under ``torch.autocast``."""
        return self.dtype != torch.float32

    def autocast(self, device_type: str):
        """``torch.autocast(device_type, dtype)`` when :attr:`amp`, else a no-op context."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def inputs(self, x):
        """``x`` in the memory format this precision computes in (``channels_last`` for 4-d tensors).

        >>> Precision("bf16", torch.bfloat16, True, "").inputs(torch.ones(1, 3, 2, 2)).is_contiguous()
        False
        """
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def label(self) -> str:
        """The short form recorded in histories and search results: ``"fp32"``, ``"bf16+channels_last"``."""
        return self.name + ("+channels_last" if self.channels_last else "")

    def describe(self) -> str:
        """One line for logs and reports: the name, ``+ channels_last`` and the reason."""
        return f"{self.name}{' + channels_last' if self.channels_last else ''} ({self.reason})"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags from ``cpuinfo`` (``flags`` / ``Features`` lines), or None where it cannot be read.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "cpuinfo")
    ...     _ = open(path, "w").write("processor : 0\\nflags : fpu avx2 avx512_bf16\\n")
    ...     sorted(cpu_flags(path))
    ['avx2', 'avx512_bf16', 'fpu']
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags) if flags else None


def _native_cpu(flags) -> tuple[bool, str]:
    if flags is None:
        flags = cpu_flags()
    if flags is None:
        capability = torch.backends.cpu.get_cpu_capability()
        return False, (f"no /proc/cpuinfo; torch reports {capability} vectors, which does not tell whether bf16 "
                       "is native (pass precision='bf16' to use it)")
    found = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU flag {found[0]}"
    return False, ("this CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, 3.5-5x slower than "
                   "fp32)")


def resolve_precision(precision: str | Precision = "auto", device=None, *, purpose: str = "train",
                      flags: frozenset[str] | set[str] | None = None) -> Precision:
    """``precision`` (``"auto"``, ``"fp32"``, ``"bf16"``) for ``device`` as a :class:`Precision`.

    ``"auto"``: bf16 + channels_last where bf16 is native (CUDA with bf16
    support, a CPU with ``avx512_bf16`` or ``amx_bf16``), fp16 + ``GradScaler``
    + channels_last on a CUDA GPU without bf16, fp32 elsewhere. With
    ``purpose="score"`` (Fisher potentials) the CPU also needs the measured
    ρ (:data:`SCORING_RHO`) ≥ 0.98. ``"bf16"`` is honoured on any CPU (slow
    where emulated). ``flags`` replaces ``/proc/cpuinfo`` (for tests);
    a :class:`Precision` is returned as it is.

    >>> resolve_precision("fp32", "cpu")
    Precision(name='fp32', dtype=torch.float32, channels_last=False, reason='asked for', scaler=False)
    >>> resolve_precision("bf16", "cpu", flags={"avx2"}).reason
    'asked for; this CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, 3.5-5x slower than fp32)'
    >>> resolve_precision("fp64")
    Traceback (most recent call last):
    ...
    fxswap.precision.PrecisionError: precision='fp64' is not known; accepted: 'auto', 'fp32', 'bf16'
    """
    if isinstance(precision, Precision):
        return precision
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision={precision!r} is not known; accepted: "
                             f"{', '.join(repr(p) for p in PRECISIONS)}")
    if purpose not in ("train", "score"):
        raise PrecisionError(f"purpose={purpose!r} is not known; accepted: 'train', 'score'")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if precision == "fp32":
        return Precision("fp32", torch.float32, False, "asked for")
    if dev.type == "cuda":
        return _cuda(precision, dev)
    if dev.type != "cpu":
        if precision == "bf16":
            return Precision("bf16", torch.bfloat16, False, f"asked for, on {dev.type}")
        return Precision("fp32", torch.float32, False, f"auto: no measurement for {dev.type} devices")
    native, why = _native_cpu(flags)
    if precision == "bf16":
        return Precision("bf16", torch.bfloat16, True, "asked for" + ("" if native else f"; {why}"))
    if not native:
        return Precision("fp32", torch.float32, False, f"auto: {why}")
    if purpose == "score" and (SCORING_RHO is None or SCORING_RHO < 0.98):
        measured = "is not measured" if SCORING_RHO is None else f"measured rho {SCORING_RHO:.3f} < 0.98"
        return Precision("fp32", torch.float32, False, f"auto: {why}, but the rank agreement of bf16 and fp32 "
                                                        f"Fisher potentials {measured}")
    return Precision("bf16", torch.bfloat16, True, f"auto: {why}")


def _cuda(precision: str, dev: torch.device) -> Precision:
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "bf16":
        if not supported:
            raise PrecisionError(f"precision='bf16' on {dev}, which does not support bf16; use 'auto' (fp16 with "
                                 "a GradScaler there) or 'fp32'")
        return Precision("bf16", torch.bfloat16, True, "asked for")
    if supported:
        return Precision("bf16", torch.bfloat16, True, "auto: CUDA with bf16")
    return Precision("fp16", torch.float16, True, "auto: CUDA without bf16", scaler=True)


def amp_precision(amp: bool | None, amp_dtype: torch.dtype | None, device=None) -> Precision:
    """The precision the older ``amp=`` / ``amp_dtype=`` arguments ask for: autocast when ``amp`` (default:
    on CUDA only) in ``amp_dtype`` (default fp16 with a ``GradScaler`` on CUDA, bf16 elsewhere), no
    channels_last. :func:`fxswap.fit` uses it whenever either argument is given.

    >>> amp_precision(True, None, "cpu").describe()
    'bf16 (amp=True)'
    >>> amp_precision(None, torch.bfloat16, "cpu").name  # amp defaults to CUDA only
    'fp32'
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    use = (dev.type == "cuda") if amp is None else bool(amp)
    dtype = amp_dtype if amp_dtype is not None else (torch.float16 if dev.type == "cuda" else torch.bfloat16)
    if not use or dtype == torch.float32:
        return Precision("fp32", torch.float32, False, f"amp={amp}")
    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    if dtype not in names:
        raise PrecisionError(f"amp_dtype={dtype} is not an autocast dtype; accepted: torch.bfloat16, torch.float16")
    return Precision(names[dtype], dtype, False, f"amp={amp}", scaler=dtype == torch.float16 and dev.type == "cuda")
