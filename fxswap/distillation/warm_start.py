"""Warm start: each rewritten block of a student fitted to its teacher block, before any end-to-end training.

``cheapen(teacher, plan)`` keeps the teacher's weights outside the rewritten
blocks; only the substitutes start random, so right after the rewrite the
student is a trained network with a few random holes in it. :func:`warm_start`
fills the holes: every rewritten student block learns to map the teacher
block's *input* to the teacher block's *output* with an MSE loss. This is
LIT's per-section objective (Koratana, Kang, Bailis, Zaharia, "LIT: Learned
Intermediate Representation Training for Model Compression", ICML 2019 — seed
001, §3 "Training via intermediate representations") at block granularity,
with LIT's teacher forcing: each student block is fed the teacher's
intermediate representation, never the student's own previous block's output,
so the blocks are independent and all of them train at once from one teacher
forward per batch. Blocks that were not rewritten are copies of the teacher
and are not touched.

Only the blocks differ, so only they run: a step costs one teacher forward
(no gradient) plus a forward and backward of the rewritten blocks, and a few
thousand images take minutes on a CPU.

>>> import torch, fxswap
>>> teacher = fxswap.models.wrn(10, 1)
>>> rewritten_blocks(teacher, fxswap.cheapen(teacher, {"layer2.0": "B(2)"}))
['layer2.0']
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from ..blocks.block import find_blocks
from ..errors import DistillError
from ..metrics.table import render_table
from ..tracing.modes import kept_modes

__all__ = ["warm_start", "WarmStartReport", "rewritten_blocks"]


@dataclass
class WarmStartReport:
    """What :func:`warm_start` did: per rewritten block the MSE to the teacher block's output before and after.

    ``blocks`` maps a block name to ``(mse_before, mse_after)``, both measured
    with the student block in eval mode (as it will be used) on the loader's
    first batch(es), which are trained on too (a fit, not a generalisation
    measure); ``params`` is the number of parameters trained and ``history``
    the summed block MSE of each step.

    >>> r = WarmStartReport({"layer1.0": (2.0, 0.5)}, steps=10, images=320, seconds=1.5, params=1000)
    >>> print(r)
    block     MSE before  MSE after  after/before
    --------  ----------  ---------  ------------
    layer1.0      2.0000     0.5000         0.250
    warm start: 10 steps, 320 images, 1,000 parameters trained, 1.5 s
    """

    blocks: dict[str, tuple[float, float]]
    steps: int
    images: int
    seconds: float
    params: int
    history: list[float] = field(default_factory=list, repr=False)
    recalibrated: int = 0

    def __str__(self) -> str:
        rows = [(name, f"{b:.4f}", f"{a:.4f}", f"{a / b:.3f}" if b > 0 else "—")
                for name, (b, a) in self.blocks.items()]
        table = render_table(["block", "MSE before", "MSE after", "after/before"], rows)
        recal = (f"; BatchNorm statistics recomputed on the student's own forward over {self.recalibrated} "
                 "batches" if self.recalibrated else "")
        return (f"{table}\nwarm start: {self.steps} steps, {self.images:,} images, {self.params:,} parameters "
                f"trained, {self.seconds:.1f} s{recal}")


def _layout(module: nn.Module) -> list:
    """The module tree and parameter shapes: what a rewrite changes (values are not compared)."""
    return ([(n, type(m).__name__) for n, m in module.named_modules()]
            + [(n, tuple(p.shape)) for n, p in module.named_parameters()])


def rewritten_blocks(teacher: nn.Module, student: nn.Module, leaf_modules=()) -> list[str]:
    """Names of the teacher's blocks whose module the student has changed (``cheapen`` rewrote them).

    A block counts as rewritten when the student's module of the same name has
    another module tree or other parameter shapes (a conv-level spec swaps
    convs inside it, a branch-level one retraces it). Blocks that are not
    modules of their own cannot be compared and are left out.

    >>> import fxswap
    >>> t = fxswap.models.wrn(10, 1)
    >>> rewritten_blocks(t, fxswap.cheapen(t, "G(N/4)"))
    ['layer1.0', 'layer2.0', 'layer3.0']
    >>> rewritten_blocks(t, fxswap.cheapen(t, "S"))
    []
    """
    t_mods, s_mods = dict(teacher.named_modules()), dict(student.named_modules())
    names = []
    for b in find_blocks(teacher, leaf_modules):
        if b.name not in t_mods:
            continue
        if b.name not in s_mods:
            raise DistillError(f"the student has no module {b.name!r} (a block of the teacher): warm_start needs "
                               "a student made by fxswap.cheapen(teacher, plan) from this teacher")
        if _layout(t_mods[b.name]) != _layout(s_mods[b.name]):
            names.append(b.name)
    return names


def _batches(loader) -> Iterator[Tensor]:
    """The loader's inputs, round and round (``steps`` may exceed one pass)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch[0] if isinstance(batch, (list, tuple)) else batch
        if empty:
            raise DistillError("warm_start: the loader yielded no batch")


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _block_names(teacher, student, blocks, leaf_modules) -> list[str]:
    """The blocks to fit: ``blocks`` as given, else those ``cheapen`` rewrote; each a module of both models."""
    names = list(blocks) if blocks is not None else rewritten_blocks(teacher, student, leaf_modules)
    if not names:
        raise DistillError("warm_start: no block of the student differs from the teacher's, so there is nothing "
                           "to fit; pass a student made by fxswap.cheapen(teacher, plan) with a spec that rewrites "
                           "blocks (e.g. 'G(N/4)' or 'B(2)'), or blocks=[...] to name them")
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    unknown = [n for n in names if n not in s_mods or n not in t_mods]
    if unknown:
        raise DistillError(f"warm_start: block(s) {unknown} are not modules of both teacher and student; "
                           f"rewritten blocks here: {rewritten_blocks(teacher, student, leaf_modules)}")
    return names


def _check(teacher, student, steps, lr, measure_batches=1, recalibrate=0) -> None:
    for who, m in (("teacher", teacher), ("student", student)):
        if not isinstance(m, nn.Module):
            raise DistillError(f"warm_start: the {who} must be an nn.Module, got {type(m).__name__}")
    if teacher is student:
        raise DistillError("warm_start: teacher and student are the same object; pass fxswap.cheapen(teacher, plan)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DistillError(f"warm_start: steps must be an integer >= 1, got {steps!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not (math.isfinite(lr) and lr > 0):
        raise DistillError(f"warm_start: lr must be a positive number, got {lr!r}")
    if not isinstance(measure_batches, int) or isinstance(measure_batches, bool) or measure_batches < 1:
        raise DistillError(f"warm_start: measure_batches must be an integer >= 1, got {measure_batches!r}")
    if not isinstance(recalibrate, int) or isinstance(recalibrate, bool) or recalibrate < 0:
        raise DistillError(f"warm_start: recalibrate must be an integer >= 0 (batches; 0 = off), got {recalibrate!r}")


def _teacher_io(teacher: nn.Module, blocks: dict[str, nn.Module], x: Tensor, autocast) -> dict[str, tuple]:
    """One teacher forward: ``{block: (args, kwargs, output)}``, each block's first call."""
    seen: dict[str, tuple] = {}

    def keep(name):
        def hook(module, args, kwargs, output):
            seen.setdefault(name, (args, kwargs, output))
        return hook

    hooks = [m.register_forward_hook(keep(n), with_kwargs=True) for n, m in blocks.items()]
    try:
        with torch.no_grad(), autocast():
            teacher(x)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in blocks if n not in seen]
    if missing:
        raise DistillError(f"warm_start: the teacher's forward never called block(s) {missing}")
    for name, (_, _, out) in seen.items():
        if not isinstance(out, Tensor):
            raise DistillError(f"warm_start: block {name!r} returns {type(out).__name__}, not a tensor; warm_start "
                               "fits blocks whose output is one tensor")
    return seen


def _block_losses(s_blocks: dict[str, nn.Module], io: dict[str, tuple], autocast) -> dict[str, Tensor]:
    """MSE of each student block, fed the teacher block's input, to the teacher block's output."""
    losses = {}
    for name, block in s_blocks.items():
        args, kwargs, target = io[name]
        # a clone per block: block i's output is block i+1's input, and an in-place op inside a student
        # block would otherwise overwrite another block's target
        args, kwargs = tree_map(lambda v: v.clone() if isinstance(v, Tensor) else v, (args, kwargs))
        try:
            with autocast():
                out = block(*args, **kwargs)
        except RuntimeError as exc:  # a student of another teacher: its block rejects the teacher's tensors
            raise DistillError(f"warm_start: student block {name!r} cannot take the teacher block's input "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0]}); is the student "
                               "fxswap.cheapen() of this teacher?") from None
        if not isinstance(out, Tensor) or out.shape != target.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise DistillError(f"warm_start: student block {name!r} gives {got} where the teacher's gives "
                               f"{tuple(target.shape)}; is the student fxswap.cheapen() of this teacher?")
        losses[name] = nn.functional.mse_loss(out.float(), target.float())
    return losses


def _recalibrate(student: nn.Module, s_blocks: dict[str, nn.Module], batches: Iterator[Tensor], n: int,
                 device: torch.device, autocast) -> int:
    """The rewritten blocks' BatchNorm running statistics recomputed over ``n`` batches of the student's own
    forward: a cumulative average (``momentum=None``) from reset statistics, every other module in eval mode so
    that nothing outside the blocks changes. The caller restores the train/eval flags. Returns the batches run
    (0: the blocks hold no BatchNorm, so the report does not claim a recalibration)."""
    bns = [m for b in s_blocks.values() for m in b.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    student.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad(), autocast():
            for _ in range(n):
                student(next(batches).to(device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    return n


def _measure(s_blocks, held, autocast) -> dict[str, float]:
    for block in s_blocks.values():
        block.eval()
    total: dict[str, float] = dict.fromkeys(s_blocks, 0.0)
    with torch.no_grad():
        for io in held:
            for name, loss in _block_losses(s_blocks, io, autocast).items():
                total[name] += float(loss) / len(held)
    return total


def warm_start(teacher: nn.Module, student: nn.Module, loader, *, steps: int = 200, lr: float = 3e-3,
               device: str | torch.device | None = None, amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16,
               blocks: Sequence[str] | None = None, leaf_modules=(), measure_batches: int = 1,
               recalibrate: int = 20) -> WarmStartReport:
    """Fit each rewritten block of ``student`` to its teacher block (LIT's teacher-forced block objective).

    For ``steps`` batches of ``loader`` (cycled; ``(x, y)`` or ``x``): one
    teacher forward in eval mode under ``torch.no_grad`` records every
    rewritten block's input and output (forward hooks), then every rewritten
    student block, in train mode and fed the *teacher's* input, is trained to
    give the teacher's output, MSE summed over the blocks, Adam at ``lr``
    (a regression from a random start, where Adam needs no schedule). Cite:
    Koratana et al., "LIT: Learned Intermediate Representation Training for
    Model Compression", ICML 2019 (seed 001), eq. 3 at block granularity.

    ``blocks``: the block names to fit (default :func:`rewritten_blocks`, the
    blocks whose modules ``cheapen`` changed; every parameter of such a block
    trains, the teacher copies inside it such as a pre-activation BN too, as
    their input has changed). Nothing outside those blocks is touched. The
    student is trained in place (moved to ``device``, default where it is);
    the teacher is never modified (a copy is moved when it lives elsewhere);
    each module's train/eval flag is restored. ``amp`` runs the forwards
    under ``torch.autocast`` with ``amp_dtype`` (bf16 on a CPU with native
    bf16). Returns a :class:`WarmStartReport`: per block the MSE before and
    after the fit, measured in eval mode on the first ``measure_batches`` batches.

    ``recalibrate``: then the rewritten blocks' BatchNorm statistics are
    recomputed over that many batches of the student's *own* forward (0
    keeps the fit's, which describe the teacher's inputs): on the 90 %
    WRN-16-2 with every block ``G(N/4)`` this took the student's test error
    from 84 % to 66 % (``docs/design.md``, which also says why lr is 3e-3).

    >>> import torch, fxswap
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> _ = torch.manual_seed(0)
    >>> teacher = fxswap.models.wrn(10, 1)
    >>> data = DataLoader(TensorDataset(torch.randn(64, 3, 16, 16), torch.zeros(64, dtype=torch.long)), batch_size=32)
    >>> with torch.no_grad():     # BatchNorm statistics of the data, as a trained teacher has
    ...     _ = [teacher.train()(x) for x, _ in data for _ in range(10)]
    >>> student = fxswap.cheapen(teacher.eval(), "G(N/4)")
    >>> report = warm_start(teacher, student, data, steps=30, lr=3e-3)
    >>> sorted(report.blocks), report.images
    (['layer1.0', 'layer2.0', 'layer3.0'], 960)
    >>> all(after < before for before, after in report.blocks.values())
    True
    """
    _check(teacher, student, steps, lr, measure_batches, recalibrate)
    names = _block_names(teacher, student, blocks, leaf_modules)
    device = torch.device(device) if device is not None else _device_of(student)
    s_mods = dict(student.named_modules())
    t = teacher if _device_of(teacher) == device else copy.deepcopy(teacher).to(device)
    student.to(device)
    t_blocks = {n: dict(t.named_modules())[n] for n in names}
    s_blocks = {n: s_mods[n] for n in names}
    params = list({id(p): p for b in s_blocks.values() for p in b.parameters() if p.is_floating_point()}.values())
    if not params:
        raise DistillError(f"warm_start: the rewritten block(s) {names} have no parameters to fit (an 'I' "
                           "block is an identity)")

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=bool(amp))

    t0 = time.perf_counter()
    with kept_modes(teacher, t, student), torch.enable_grad():  # trains even when called under no_grad
        t.eval()
        batches = _batches(loader)
        held = [_teacher_io(t, t_blocks, next(batches).to(device), autocast) for _ in range(measure_batches)]
        before = _measure(s_blocks, held, autocast)
        grads = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        history, images = [], 0
        try:
            for step in range(steps):
                x = next(batches).to(device)
                images += len(x)
                io = _teacher_io(t, t_blocks, x, autocast)
                for b in s_blocks.values():
                    b.train()
                loss = sum(_block_losses(s_blocks, io, autocast).values())
                if not torch.isfinite(loss):
                    raise DistillError(f"warm_start: the block MSE became {float(loss)} at step {step + 1}; "
                                       f"lower lr (now {lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history.append(float(loss.detach()))
        finally:
            opt.zero_grad(set_to_none=True)
            for p, g in zip(params, grads):
                p.requires_grad_(g)
        after = _measure(s_blocks, held, autocast)
        recalibrated = _recalibrate(student, s_blocks, batches, recalibrate, device, autocast) if recalibrate else 0
    return WarmStartReport({n: (before[n], after[n]) for n in names}, steps=steps, images=images,
                           seconds=time.perf_counter() - t0, params=sum(p.numel() for p in params), history=history,
                           recalibrated=recalibrated)
