"""Fisher potential (BlockSwap, seed 003 §3.3 and §4) and per-block sensitivity.

The signal is Theis et al. (2018)'s second-order estimate of the loss change
when one activation channel is removed. For a channel with activation
``A`` (``N × H × W`` over a minibatch of ``N``) and the gradient ``g`` of the
loss with respect to it::

    Δ_c = 1/(2N) · Σ_n ( Σ_ij A_nijc · g_nijc )²

BlockSwap places a probe after the last convolution of each block (before
the residual add), passes one training minibatch through a randomly
initialised network in train mode, back-propagates the cross-entropy and sums
``Δ_c`` over the channels of every probe and over the blocks: the network
with the highest total (its *Fisher potential*) wins.

Details the extracted text garbles, settled from the paper's reference
implementation (BayesWatch/pytorch-blockswap, ``models/blocks.py``
``MaskBlock._fisher`` and ``model_generator.py`` ``one_shot_fisher``):

* the probe is an identity module right after the block's second conv
  (``conv2`` or the last 1×1 of its substitute) and before ``torch.add``
  with the shortcut; its backward hook reads ``grad_output``;
* per channel ``(act * grad).sum(-1).sum(-1)``, squared, ``.mean(0)``
  over the minibatch, ``.mul(0.5)``: exactly ``1/(2N) Σ_n (Σ_ij A g)²``
  (the squares of the *spatial sums*, not eq. 2's garbled ``Σ A² g²``);
* block score = sum over channels (of the absolute value, a no-op as
  every term is a square); network score = sum over blocks;
* ``net.train()`` (BatchNorm uses minibatch statistics) and
  ``nn.CrossEntropyLoss()`` with its default mean reduction, on one
  training minibatch of the training batch size (128 on CIFAR).

Departure: the reference calls ``loss.backward()``, computing every weight
gradient it then ignores; here ``torch.autograd.grad(loss, activations)``
asks only for the activation gradients, which skips the weight-gradient
convolutions and everything below the first probe.

>>> import torch
>>> from fxswap.models import wrn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
>>> fp = fisher_potential(wrn(10, 1), (x, y))
>>> list(fp.blocks), fp.total == sum(fp.blocks.values()) and fp.total > 0
(['layer1.0', 'layer2.0', 'layer3.0'], True)
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks.block import Block, find_blocks
from ..errors import FxswapError
from ..precision import Precision, resolve_precision
from ..probes import probe
from ..surgery.rewrite import cheapen
from ..seeding import derived_seed, seeded
from ..surgery.spec import BlockSpec, parse_spec
from ..surgery.substitutes import reference_init
from ..tracing.modes import kept_modes

__all__ = ["FisherPotential", "fisher_potential", "fisher_signal", "channel_fisher", "kept_state", "probe_points",
           "FisherScorer", "sensitivity", "SensitivityReport", "random_init"]


@dataclass(frozen=True)
class FisherPotential:
    """The Fisher potential of one network on one minibatch.

    ``total``: the network's score (sum over blocks); ``blocks``: each block's
    score (sum over its probe's channels), keyed by block name;
    ``channels``: the per-channel ``Δ_c`` of each block (a CPU tensor).
    Made by :func:`fisher_potential`; the repr leaves ``channels`` out.

    >>> fp = FisherPotential(total=3.0, blocks={"layer1.0": 1.0, "layer2.0": 2.0})
    >>> fp, max(fp.blocks, key=fp.blocks.get)
    (FisherPotential(total=3.0, blocks={'layer1.0': 1.0, 'layer2.0': 2.0}), 'layer2.0')
    """

    total: float
    blocks: dict[str, float]
    channels: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def channel_fisher(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``Δ_c = 1/(2N) Σ_n (Σ_ij A_nijc g_nijc)²`` for each channel ``c`` (dim 1).

    ``activation`` and ``grad`` are ``(N, C, ...)``; any trailing dims are
    summed like the spatial ones. As the reference's ``MaskBlock._fisher``:
    ``(act * grad).sum(spatial).pow(2).mean(0).mul(0.5)``.

    >>> a = torch.ones(2, 1, 2, 2); g = torch.full((2, 1, 2, 2), 0.5)
    >>> channel_fisher(a, g)        # each image: (4 · 0.5)² = 4; mean 4; half 2
    tensor([2.])
    """
    if activation.shape != grad.shape or activation.dim() < 2:
        raise FxswapError(f"channel_fisher needs an activation and its gradient of one shape (N, C, ...), got "
                          f"{tuple(activation.shape)} and {tuple(grad.shape)}")
    prod = (activation.detach().float() * grad.detach().float())
    per_image = prod.flatten(2).sum(-1) if prod.dim() > 2 else prod  # (N, C)
    return per_image.pow(2).mean(0).mul(0.5)


@contextlib.contextmanager
def kept_state(model: nn.Module):
    """Put ``model`` in train mode for a Fisher forward; afterwards every module's ``training`` flag and
    every buffer (BatchNorm running statistics) are exactly as they were.

    >>> m = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)).train()
    >>> _ = m[1].eval()
    >>> with kept_state(m):
    ...     _ = m(torch.randn(4, 2))
    >>> [x.training for x in m.modules()], float(m[0].running_mean.abs().sum())
    ([True, True, False], 0.0)
    """
    saved = [(b, b.detach().clone()) for _, b in model.named_buffers()]
    with kept_modes(model):
        try:
            model.train()
            yield model
        finally:
            with torch.no_grad():
                for b, v in saved:
                    b.copy_(v)


def fisher_signal(forward: Callable[[], tuple], targets: torch.Tensor, loss_fn: Callable = F.cross_entropy,
                  check: Callable | None = None) -> dict[str, torch.Tensor]:
    """The Fisher signal: ``forward()`` → ``(output, {point: activation})``, ``loss_fn(output, targets)``,
    gradients for the activations only (``torch.autograd.grad``), and :func:`channel_fisher` per point.

    Shared by :func:`fisher_potential` and the search's :class:`FisherScorer`. ``check(activations,
    names)`` may vet the activations before the backward pass.

    >>> conv = torch.nn.Conv2d(1, 2, 1)
    >>> x = torch.randn(3, 1, 2, 2)
    >>> sig = fisher_signal(lambda: (conv(x).mean((2, 3)), {"c": conv(x)}), torch.tensor([0, 1, 0]))
    >>> sig["c"].shape
    torch.Size([2])
    """
    with torch.enable_grad():
        out, feats = forward()
        if isinstance(out, (tuple, list)):
            out = out[0]
        names = list(feats)
        acts = [feats[n] for n in names]
        if check is not None:
            check(acts, names)
        grads = torch.autograd.grad(loss_fn(out, targets), acts, allow_unused=True)
    return {n: channel_fisher(a, g if g is not None else torch.zeros_like(a)) for n, a, g in zip(names, acts, grads)}


def probe_points(model: nn.Module, blocks: Sequence[Block] | None = None, leaf_modules=()) -> dict[str, str]:
    """``{block name: path of its last convolution}``: where BlockSwap's probes sit.

    >>> from fxswap.models import wrn
    >>> from fxswap import cheapen
    >>> probe_points(cheapen(wrn(10, 1), {"layer2.*": "B(2)", "*": "G(N/4)"}))
    {'layer1.0': 'layer1.0.conv2.pointwise', 'layer2.0': 'layer2.0.substitute.up', 'layer3.0': 'layer3.0.conv2.pointwise'}
    """
    blocks = find_blocks(model, leaf_modules) if blocks is None else blocks
    return {b.name: b.last_conv for b in blocks if b.last_conv}


def fisher_potential(model: nn.Module, batch, loss_fn: Callable = F.cross_entropy, *,
                     points: dict[str, str] | None = None, leaf_modules=(),
                     precision: str | Precision = "auto") -> FisherPotential:
    """BlockSwap's Fisher potential of ``model`` on one minibatch ``batch = (x, y)``.

    A probe (a graph output, :func:`fxswap.probe`) after the last convolution
    of each block; one forward in train mode, ``loss_fn(output, y)``
    (cross-entropy, mean over the batch, as the paper), and gradients for the
    probed activations only. Per channel ``Δ_c`` (:func:`channel_fisher`),
    summed per block and over blocks. ``points`` overrides the probe points
    (``{name: node name}``); by default :func:`probe_points`. ``precision``
    (``"auto"``, ``"fp32"``, ``"bf16"``; :func:`fxswap.precision.resolve_precision`
    with ``purpose="score"``): the forward's autocast dtype and input memory
    format; ``"auto"`` is bf16 only where bf16 is native *and* the measured
    rank agreement with fp32 reached ρ ≥ 0.98.

    The model's parameters, train/eval modes and BatchNorm running statistics
    are left as they were. Use it on a freshly initialised network, as the
    paper does (:func:`random_init`); on a trained one it measures something
    else.

    >>> import torch
    >>> from fxswap.models import wrn
    >>> x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    >>> fp = fisher_potential(wrn(10, 1), (x, y))
    >>> fp.channels["layer2.0"].shape
    torch.Size([32])
    """
    x, y = batch
    with kept_state(model):  # probe() and the forward leave every flag and buffer as found
        if points is None:
            points = probe_points(model, leaf_modules=leaf_modules)
        if not points:
            raise FxswapError("fisher_potential found no block with a convolution to probe")
        probed = probe(model, list(points.values()), leaf_modules)
        ref = next(model.parameters(), None)
        if ref is not None:
            x, y = x.to(ref.device), y.to(ref.device)
        prec = resolve_precision(precision, x.device, purpose="score")
        x = prec.inputs(x)
        model.train()
        probed.train()

        def forward():
            with prec.autocast(x.device.type):
                out, feats = probed(x)
            return out, {name: feats[p] for name, p in points.items()}

        signal = fisher_signal(forward, y, loss_fn, check=_check_fresh)
    channels = {name: delta.cpu() for name, delta in signal.items()}
    blocks = {name: float(delta.sum()) for name, delta in channels.items()}
    return FisherPotential(total=float(sum(blocks.values())), blocks=blocks, channels=channels)


def _check_fresh(acts, names) -> None:
    for name, a in zip(names, acts):
        if not a.requires_grad:
            raise FxswapError(f"the probe of block {name!r} does not depend on any parameter: no gradient to measure")
        fn = type(a.grad_fn).__name__.lower() if a.grad_fn is not None else ""
        if "conv" not in fn:
            warnings.warn(f"the probe of block {name!r} was modified in place after its convolution "
                          f"({type(a.grad_fn).__name__}); its Fisher is taken after that op", stacklevel=4)


def random_init(model: nn.Module, seed: int | None = 0) -> nn.Module:
    """Re-initialise every parameter in place, as the reference's WRN does, and return ``model``.

    The rule is :func:`fxswap.surgery.substitutes.reference_init` (the one a
    substitute starts with). Convolutions: He fan-out normal
    ``N(0, 2/(k²·out))``; norms: weight 1, bias 0; linear layers: PyTorch's
    default, bias 0; anything else with ``reset_parameters``: that. With
    ``seed`` the result is reproducible (the global RNG is left untouched).

    >>> from fxswap.models import wrn
    >>> a, b = random_init(wrn(10, 1), 3), random_init(wrn(10, 1), 3)
    >>> bool(torch.equal(a.conv1.weight, b.conv1.weight))
    True
    """
    with seeded(seed):
        return reference_init(model)


class _Tapped(nn.Module):
    """A block variant probed after its last convolution: returns the block's output and
    leaves the probed activation in a shared ``sink`` (the scorer reads it)."""

    def __init__(self, probed: nn.Module, name: str, sink: dict):
        super().__init__()
        self.probed = probed
        self.block_name = name
        self.sink = sink

    def forward(self, *args, **kwargs):
        out, feats = self.probed(*args, **kwargs)
        for v in feats.values():
            self.sink[self.block_name] = v
        return out


class FisherScorer:
    """Fisher potential of a plan without building a network (BlockSwap's scorer).

    ``variants[block][spec]`` are built block modules and ``points[block][spec]``
    the path of each one's last convolution inside it (``None``: nothing to
    probe). Each variant is probed once; per plan, the variants are swapped
    into one working copy of ``base`` and :func:`fisher_signal` scores it.
    ``score(plan) == fisher_potential(build(plan))``. ``precision``: as
    :func:`fisher_potential`'s (resolved for the device of the scored batch).

    >>> from fxswap.models import wrn
    >>> net = wrn(10, 1)
    >>> names = ["layer1.0", "layer2.0", "layer3.0"]
    >>> scorer = FisherScorer(net, {n: {"S": net.get_submodule(n)} for n in names},
    ...                       {n: {"S": "conv2"} for n in names}, precision="fp32")
    >>> x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    >>> total, blocks = scorer.score({n: "S" for n in names}, (x, y))
    >>> abs(total - fisher_potential(net, (x, y), precision="fp32").total) < 1e-4 * total
    True
    """

    def __init__(self, base: nn.Module, variants: dict[str, dict[str, nn.Module]],
                 points: dict[str, dict[str, str | None]], leaf_modules=(), precision: str | Precision = "auto"):
        if not isinstance(precision, Precision):
            resolve_precision(precision, purpose="score")  # a bad value fails here, not at the first score
        self.precision = precision
        self.base, self.variants, self.points = base, variants, points
        self.names = list(variants)
        self.leaf_modules = tuple(leaf_modules)
        self._sink: dict[str, torch.Tensor] = {}
        self._tapped: dict[tuple[str, str], nn.Module] = {}
        self._working: nn.Module | None = None

    def tap(self, name: str, spec: str) -> nn.Module:
        """The variant of block ``name`` for ``spec``, probed after its last convolution (built once)."""
        key = (name, spec)
        if key not in self._tapped:
            variant, rel = self.variants[name][spec], self.points[name][spec]
            self._tapped[key] = variant if rel is None else _Tapped(probe(variant, [rel], self.leaf_modules), name,
                                                                     self._sink)
        return self._tapped[key]

    def _swap(self, model: nn.Module, modules: dict[str, nn.Module]) -> nn.Module:
        for n in sorted(modules, key=lambda n: -n.count(".")):  # inner blocks first
            model.set_submodule(n, modules[n])
        return model

    def build(self, specs: dict[str, str]) -> nn.Module:
        """A standalone network with one spec per block and exactly the weights the scorer uses."""
        return self._swap(copy.deepcopy(self.base), {n: copy.deepcopy(self.variants[n][specs[n]]) for n in specs})

    def score(self, specs: dict[str, str], batch, loss_fn: Callable = F.cross_entropy, *,
              precision: str | Precision | None = None) -> tuple[float, dict[str, float]]:
        """``(total, per block)`` Fisher potential of the network with one spec per block, in ``precision``
        (default: the scorer's)."""
        if self._working is None:
            self._working = copy.deepcopy(self.base)
        model = self._swap(self._working, {n: self.tap(n, specs[n]) for n in self.names})
        x, y = batch
        prec = resolve_precision(self.precision if precision is None else precision, x.device, purpose="score")
        x = prec.inputs(x)
        self._sink.clear()
        model.train()

        def forward():
            with prec.autocast(x.device.type):
                out = model(x)
            return out, {n: self._sink[n] for n in self.names if n in self._sink}

        try:
            signal = fisher_signal(forward, y, loss_fn)
        finally:
            self._sink.clear()
        blocks = {n: float(delta.sum()) for n, delta in signal.items()}
        return float(sum(blocks.values())), blocks


@dataclass(frozen=True)
class SensitivityRow:
    """One block cheapened on its own: the whole network's params and Fisher potential."""

    block: str
    stage: int
    params: int
    saved: int
    fisher: float
    block_fisher: float


@dataclass(frozen=True)
class SensitivityReport:
    """:func:`sensitivity`'s result; ``table()`` renders it.

    ``baseline``: the unmodified network's Fisher potential (same
    initialisation); ``rows``: one per block, in network order.

    >>> rep = SensitivityReport("G(N/4)", 1000, 2.0, (SensitivityRow("layer1.0", 0, 900, 100, 1.5, 0.25),))
    >>> print(rep.table())
    block     stage  params  saved  fisher  Δfisher  block fisher
    --------  -----  ------  -----  ------  -------  ------------
    layer1.0      0     900    100     1.5   -25.0%          0.25
    (none)            1,000      0       2    +0.0%
    """

    spec: str
    teacher_params: int
    baseline: float
    rows: tuple[SensitivityRow, ...]

    def table(self) -> str:
        """One row per block: params after cheapening it, params saved, Fisher (and change)."""
        from ..metrics.table import render_table

        rows = []
        for r in self.rows:
            change = (r.fisher - self.baseline) / self.baseline if self.baseline else float("nan")
            rows.append((r.block, r.stage, r.params, r.saved, f"{r.fisher:.4g}", f"{change:+.1%}",
                         f"{r.block_fisher:.4g}"))
        rows.append(("(none)", "", self.teacher_params, 0, f"{self.baseline:.4g}", "+0.0%", ""))
        return render_table(["block", "stage", "params", "saved", "fisher", "Δfisher", "block fisher"], rows)

    def __str__(self) -> str:
        return self.table()


def sensitivity(teacher: nn.Module, spec: str | BlockSpec, batch, loss_fn: Callable = F.cross_entropy, *,
                seed: int = 0, reinit: bool = True, leaf_modules=(), progress: bool = False,
                precision: str | Precision = "auto") -> SensitivityReport:
    """Cheapen one block at a time with ``spec`` (BlockSwap appendix B, Fig. 4).

    For each block: the network with only that block rewritten, its
    parameters, the parameters saved, its Fisher potential (all blocks) and
    that block's own score. Every variant starts from the same random
    initialisation (``seed``; ``reinit=False`` keeps the teacher's weights
    outside the substitute), so the differences come from the block. A block
    whose cheapening drops the network's Fisher potential most is one to
    protect; one that saves many parameters at little loss is one to cheapen.
    ``precision``: as :func:`fisher_potential`'s.

    >>> import torch
    >>> from fxswap.models import wrn
    >>> x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    >>> rep = sensitivity(wrn(10, 1), "G(N/4)", (x, y))
    >>> [r.block for r in rep.rows], all(r.saved > 0 for r in rep.rows)
    (['layer1.0', 'layer2.0', 'layer3.0'], True)
    >>> print(rep.table().splitlines()[0])
    block     stage  params  saved  fisher  Δfisher  block fisher
    """
    spec = parse_spec(spec)
    base = random_init(copy.deepcopy(teacher), seed) if reinit else teacher
    blocks = find_blocks(base, leaf_modules)
    teacher_params = sum(p.numel() for p in base.parameters())
    baseline = fisher_potential(base, batch, loss_fn, leaf_modules=leaf_modules, precision=precision).total
    rows = []
    iterator = blocks
    if progress:
        from tqdm import tqdm

        iterator = tqdm(blocks, desc=f"sensitivity {spec}", unit="block")
    for b in iterator:
        with warnings.catch_warnings(), seeded(derived_seed(seed, b.name, spec)):
            warnings.simplefilter("ignore")
            student = cheapen(base, {b.name: spec}, leaf_modules=leaf_modules)
        fp = fisher_potential(student, batch, loss_fn, leaf_modules=leaf_modules, precision=precision)
        params = sum(p.numel() for p in student.parameters())
        rows.append(SensitivityRow(b.name, b.stage, params, teacher_params - params, fp.total,
                                   fp.blocks.get(b.name, 0.0)))
    return SensitivityReport(str(spec), teacher_params, baseline, tuple(rows))
