"""Every random stream fxswap touches, in one place: scoped seeds, derived
seeds, per-epoch reseeding, and the RNG state a checkpoint saves.

>>> import torch
>>> with seeded(3):
...     a = torch.rand(1)
>>> with seeded(3):
...     b = torch.rand(1)
>>> bool(a == b)
True
"""
from __future__ import annotations

import contextlib
import random
import zlib
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from .errors import FxswapError

__all__ = ["seeded", "derived_seed", "epoch_seed", "reseed", "rng_state", "set_rng_state"]


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded by ``seed``, restoring the global stream after
    (``None``: no seeding, the global stream runs on).

    >>> state = torch.get_rng_state()
    >>> with seeded(0):
    ...     _ = torch.rand(3)
    >>> torch.equal(state, torch.get_rng_state())
    True
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def derived_seed(seed: int, *parts) -> int:
    """A seed for one (block, spec) pair, stable across runs and candidate orders.

    >>> derived_seed(0, "layer1.0", "G(4)") == derived_seed(0, "layer1.0", "G(4)")
    True
    """
    return zlib.crc32(":".join(str(p) for p in (seed, *parts)).encode()) & 0x7FFFFFFF


def epoch_seed(seed: int, epoch: int, phase: int = 0) -> int:
    """A 32-bit seed for ``epoch`` (phase 0: training, 1: validation) of a run seeded with ``seed``.

    >>> epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(phase)]).generate_state(1)[0])


def _loader_generators(loader) -> list[torch.Generator]:
    gens = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None),
                                                                   "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def reseed(seed: int, loader=None) -> None:
    """Seed ``random``, NumPy, torch (every device) and ``loader``'s shuffling generator(s) with ``seed``.

    >>> reseed(5); a = torch.rand(1); reseed(5)
    >>> bool(a == torch.rand(1))
    True
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    for g in _loader_generators(loader):
        g.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The state of every global RNG, as tensors and plain numbers (``torch.load(weights_only=True)`` reads it).

    >>> sorted(rng_state())
    ['cuda', 'numpy', 'python', 'torch']
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned; a malformed state is an :class:`FxswapError`.

    >>> s = rng_state(); a = torch.rand(1); set_rng_state(s)
    >>> bool(a == torch.rand(1))
    True
    >>> set_rng_state({"torch": torch.zeros(3, dtype=torch.uint8)})
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: malformed RNG state: ...
    """
    try:
        n, p = state["numpy"], state["python"]
        np_state = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
        py_state = (p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"])
        before = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            torch.set_rng_state(state["torch"])
            np.random.set_state(np_state)
            random.setstate(py_state)
        except BaseException:
            torch.set_rng_state(before[0]), np.random.set_state(before[1]), random.setstate(before[2])
            raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        raise FxswapError(f"malformed RNG state: {type(e).__name__}: {e}") from None
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
