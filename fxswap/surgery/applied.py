"""What :func:`fxswap.cheapen` did, block by block: the record every student carries.

A whole-model spec (``"B(2)"``) keeps the blocks it cannot serve (an
attention block under ``B(2)``), would make larger, or cannot rewrite, with one
warning. What was *asked* is then not what was *applied*, and anything that
rebuilds the student (:func:`fxswap.save_student` / :func:`fxswap.load_student`),
compares it (:func:`fxswap.compare`) or prints it (``fxswap cheapen``) needs the
applied plan. ``cheapen`` writes it on the student as the plain-data attribute
``fxswap_applied`` (a dict of dicts and strings: it follows ``copy.deepcopy``
and pickling, and is never in the ``state_dict``); :func:`applied_plan` reads it
back as an :class:`AppliedPlan`. The student is exactly
``cheapen(teacher, applied_plan(student).plan)``: per block, one spec, ``"S"``
where the block was kept.

>>> import warnings, fxswap
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")  # "G(N/16) cannot rewrite 2 block(s), kept as they are: ..."
...     student = fxswap.cheapen(fxswap.models.wrn(16, 1), "G(N/16)")
>>> record = applied_plan(student)
>>> record.plan["layer1.1"], record.asked["layer1.1"], record.kept["layer1.1"]
('S', 'G(N/16)', 'would be larger: 4,608 -> 5,184 parameters')
>>> record.plan["layer3.1"]
'G(N/16)'
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

from ..errors import FxswapError

__all__ = ["AppliedPlan", "applied_plan", "record_of", "attach", "detach", "ATTRIBUTE"]

#: the student attribute holding the record (a plain dict, see :meth:`AppliedPlan.to_dict`)
ATTRIBUTE = "fxswap_applied"
#: torch.fx's GraphModule.__deepcopy__ rebuilds the module and keeps only the attributes listed here
_FX_PRESERVED = "_user_preserved_attributes"


@dataclass(frozen=True)
class AppliedPlan:
    """Per block: the spec ``cheapen`` applied (``plan``), the one it was asked for (``asked``) and, for each
    block kept as it is, why (``kept``); ``root`` and ``allow_larger`` are the ``cheapen`` options the
    rebuild needs.

    >>> r = AppliedPlan({"a": "S", "b": "B(2)"}, {"a": "B(2)", "b": "B(2)"}, {"a": "B(2) does not apply"})
    >>> r.rows()
    [('a', 'B(2)', 'S', 'kept: B(2) does not apply'), ('b', 'B(2)', 'B(2)', '')]
    >>> AppliedPlan.from_dict(r.to_dict()) == r
    True
    """

    plan: dict[str, str]
    asked: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    root: str | None = None
    allow_larger: bool = False

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(block, asked, applied, note)`` in block order; the note says why a kept block was kept."""
        return [(name, self.asked.get(name, spec), spec, f"kept: {self.kept[name]}" if name in self.kept else "")
                for name, spec in self.plan.items()]

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable, what the student attribute holds)."""
        return {"plan": dict(self.plan), "asked": dict(self.asked), "kept": dict(self.kept), "root": self.root,
                "allow_larger": bool(self.allow_larger)}

    @classmethod
    def from_dict(cls, data: dict) -> "AppliedPlan":
        """The record from :meth:`to_dict`'s form; anything else is an :class:`fxswap.FxswapError`."""
        if not isinstance(data, dict) or not isinstance(data.get("plan"), dict):
            raise FxswapError(f"an applied-plan record is a dict with a 'plan' dict ({{block: spec}}); got "
                              f"{type(data).__name__}")
        return cls({str(k): str(v) for k, v in data["plan"].items()},
                   {str(k): str(v) for k, v in (data.get("asked") or {}).items()},
                   {str(k): str(v) for k, v in (data.get("kept") or {}).items()},
                   data.get("root"), bool(data.get("allow_larger", False)))


def attach(student: nn.Module, record: AppliedPlan) -> nn.Module:
    """Write ``record`` on ``student`` (returned) as the plain-data attribute :data:`ATTRIBUTE`.

    >>> from torch import nn
    >>> m = attach(nn.Linear(2, 2), AppliedPlan({"b": "S"}))
    >>> applied_plan(m).plan, "fxswap_applied" in m.state_dict()
    ({'b': 'S'}, False)
    """
    data = record.to_dict()
    setattr(student, ATTRIBUTE, data)
    if isinstance(student, fx.GraphModule):  # its deepcopy drops other attributes
        student.meta.setdefault(_FX_PRESERVED, {})[ATTRIBUTE] = data
    return student


def detach(module: nn.Module) -> AppliedPlan | None:
    """Remove the record from ``module`` and return it (``None`` if it had none).

    >>> from torch import nn
    >>> m = attach(nn.Linear(2, 2), AppliedPlan({"b": "S"}))
    >>> detach(m).plan, record_of(m)
    ({'b': 'S'}, None)
    """
    record = record_of(module)
    module.__dict__.pop(ATTRIBUTE, None)
    if isinstance(module, fx.GraphModule):
        module.meta.get(_FX_PRESERVED, {}).pop(ATTRIBUTE, None)
    return record


def record_of(module: nn.Module) -> AppliedPlan | None:
    """The record :func:`fxswap.cheapen` left on ``module``, or ``None`` (a module cheapen did not return).

    >>> from torch import nn
    >>> record_of(nn.Linear(2, 2)) is None
    True
    """
    data = getattr(module, ATTRIBUTE, None) if isinstance(module, nn.Module) else None
    return AppliedPlan.from_dict(data) if data is not None else None


def applied_plan(student: nn.Module) -> AppliedPlan:
    """What :func:`fxswap.cheapen` applied to each block of ``student`` (see the module docstring).

    >>> import fxswap
    >>> fxswap.applied_plan(fxswap.cheapen(fxswap.models.wrn(10, 1), {"layer3.*": "B(2)"})).plan
    {'layer1.0': 'S', 'layer2.0': 'S', 'layer3.0': 'B(2)'}
    >>> fxswap.applied_plan(fxswap.models.wrn(10, 1))
    Traceback (most recent call last):
    ...
    fxswap.errors.FxswapError: this WideResNet carries no record of a cheapen (attribute 'fxswap_applied'): ...
    """
    record = record_of(student)
    if record is None:
        raise FxswapError(f"this {type(student).__name__} carries no record of a cheapen (attribute "
                          f"{ATTRIBUTE!r}): only a module returned by fxswap.cheapen (or a deep copy of one, or "
                          f"fxswap.load_student's result) has one")
    return record
