"""The block-spec grammar: what a residual block becomes.

The forms are Moonshine's cheap blocks (seed 000, Table 1 and §4.1) plus the
depth reduction of LIT / Urban et al.:

========== ==================================================================
``S``        keep the block as it is (the *standard* block)
``S-2x2``    every full k×k conv → 2×2 conv, dilated to cover the same extent
``G(g)``     every full k×k conv → grouped k×k conv (g groups) + BN-act + 1×1
``G(N/d)``   the same with groups = N/d, N = the conv's input channels
``B(b)``     the branch → 1×1 down to M = N/b, k×k, 1×1 up (a bottleneck)
``BG(b,g)``  the bottleneck with its k×k conv grouped in g groups
``BG(b,M/d)`` the same with groups = M/d, M = N/b the bottleneck width
``I``        remove the residual branch, keep the shortcut
========== ==================================================================

Specs are parsed by a small regular grammar, never ``eval``'d::

    spec  := NAME | NAME "(" arg ("," arg)* ")"
    arg   := INT | ("N" | "M") ["/" INT]

>>> parse_spec("G(N/4)")
BlockSpec('G(N/4)')
>>> str(parse_spec(" bg( 2 , m/8 ) "))
'BG(2,M/8)'
>>> parse_spec("G(N/4)").groups.resolve(64)
16

User-registered substitutes (see :func:`fxswap.register_substitute`) extend the
grammar with their own names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from ..errors import SpecError

__all__ = ["Ratio", "BlockSpec", "parse_spec", "register_form", "spec_forms"]


@dataclass(frozen=True)
class Ratio:
    """A channel count relative to a width: ``N``, ``N/4``, ``M/8``.

    ``base`` is ``"N"`` (the conv's own input width) or ``"M"`` (the
    bottleneck width inside ``BG``).

    >>> Ratio("N", 4).resolve(64)
    16
    >>> str(Ratio("M", 1))
    'M'
    """

    base: str
    divisor: int = 1

    def resolve(self, channels: int) -> int:
        """The group count this ratio gives for ``channels`` (exact division)."""
        if channels % self.divisor:
            raise SpecError(
                f"{self} needs the width to be divisible by {self.divisor}, "
                f"but it is {channels}"
            )
        return channels // self.divisor

    def __str__(self) -> str:
        return self.base if self.divisor == 1 else f"{self.base}/{self.divisor}"


Arg = Union[int, Ratio]


def _resolve_groups(arg: Arg, channels: int) -> int:
    return arg.resolve(channels) if isinstance(arg, Ratio) else arg


@dataclass(frozen=True)
class Groups:
    """The group argument of ``G`` or ``BG``: a fixed count or a :class:`Ratio`.

    >>> Groups(4).resolve(64), Groups(Ratio("N", 8)).resolve(64)
    (4, 8)
    """

    value: Arg

    def resolve(self, channels: int) -> int:
        """Number of groups for a conv with ``channels`` input channels."""
        return _resolve_groups(self.value, channels)

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class BlockSpec:
    """A parsed spec: its ``kind`` (``"G"``, ``"BG"``, ...) and arguments.

    ``str(spec)`` is the canonical form and parses back to an equal spec.

    >>> s = parse_spec("BG(2,M/4)")
    >>> s.kind, s.bottleneck, str(s.groups)
    ('BG', 2, 'M/4')
    >>> parse_spec(str(s)) == s
    True
    """

    kind: str
    args: tuple = ()

    @property
    def bottleneck(self) -> int | None:
        """The contraction ``b`` of a form whose grammar has an ``"int"`` argument (``B(b)``, ``BG(b,g)``)."""
        kinds = _FORMS.get(self.kind, ())
        return self.args[kinds.index("int")] if "int" in kinds else None

    @property
    def groups(self) -> Groups | None:
        """The group argument (the form's ``"N"`` or ``"M"`` argument: ``G(g)``, ``BG(b,g)``), else ``None``."""
        kinds = _FORMS.get(self.kind, ())
        at = next((i for i, k in enumerate(kinds) if k in ("N", "M")), None)
        return Groups(self.args[at]) if at is not None else None

    def __str__(self) -> str:
        if not self.args:
            return self.kind
        return f"{self.kind}({','.join(str(a) for a in self.args)})"

    def __repr__(self) -> str:
        return f"BlockSpec({str(self)!r})"


# Each form: its parameter kinds, in order ("int" is a positive integer; "N"/"M" accept an int or a
# Ratio on that base) and an example. Empty here: fxswap.surgery.substitutes registers the built-in forms
# through register_substitute, exactly as a user's substitute registers its own.
_FORMS: dict[str, tuple[str, ...]] = {}
_EXAMPLES: dict[str, str] = {}
#: arguments longer than this many digits are refused before int() parses them
_MAX_DIGITS = 9


def register_form(name: str, params: tuple[str, ...] = (), example: str | None = None) -> None:
    """Add a spec form to the grammar (used by :func:`fxswap.register_substitute`).

    ``params`` lists each argument's kind: ``"int"``, ``"N"`` or ``"M"``;
    ``example`` is shown in error messages (default: the name).

    >>> register_form("DW", ())
    >>> str(parse_spec("DW"))
    'DW'
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name, flags=re.ASCII):
        raise SpecError(f"spec name {name!r} must start with a letter and use letters, digits, '_' or '-'")
    for p in params:
        if p not in ("int", "N", "M"):
            raise SpecError(f"parameter kind {p!r} of {name!r} must be 'int', 'N' or 'M'")
    _FORMS[name] = tuple(params)
    _EXAMPLES[name] = example or (name if not params else f"{name}({','.join('2' for _ in params)})")


def spec_forms() -> dict[str, tuple[str, ...]]:
    """The forms the grammar accepts now, with their parameter kinds.

    >>> spec_forms()["BG"]
    ('int', 'M')
    """
    return dict(_FORMS)


_SPEC_RE = re.compile(r"([A-Za-z][A-Za-z0-9_\-]*)(?:\((.*)\))?", flags=re.ASCII | re.DOTALL)
_ARG_RE = re.compile(r"(\d+)|([NM])(?:/(\d+))?", flags=re.ASCII)


def _accepted() -> str:
    return "accepted forms: " + ", ".join(_EXAMPLES.values())


def _canonical_name(name: str) -> str | None:
    for known in _FORMS:
        if known.lower() == name.lower():
            return known
    return None


def parse_spec(text: str | BlockSpec) -> BlockSpec:
    """Parse a spec string such as ``"G(N/4)"`` into a :class:`BlockSpec`.

    Case and spaces are forgiven; the result's ``str`` is canonical. Anything
    else raises :class:`fxswap.SpecError` listing the accepted forms.

    >>> parse_spec("g(n/4)")
    BlockSpec('G(N/4)')
    >>> parse_spec("G(3.5)")
    Traceback (most recent call last):
    ...
    fxswap.errors.SpecError: invalid spec 'G(3.5)': argument '3.5' is not an integer or N, N/d, M, M/d; accepted forms: S, I, G(4), G(N/4), ...
    """
    if isinstance(text, BlockSpec):
        return text
    if not isinstance(text, str):
        raise SpecError(f"a spec must be a string like 'G(N/4)', got {type(text).__name__}; {_accepted()}")
    raw = text if len(text) <= 60 else text[:60] + "..."
    if not text.isascii():
        # unicode digits (٤, ４) and spaces (NBSP) would parse as their ASCII twins: refused, so a
        # spec means exactly what it shows
        bad = next(ch for ch in text if not ch.isascii())
        raise SpecError(f"invalid spec {raw!r}: character {bad!r} (U+{ord(bad):04X}) is not ASCII; specs use "
                        f"ASCII letters, digits, '(', ',', '/', ')' and spaces; {_accepted()}")
    compact = re.sub(r"\s+", "", text)
    m = _SPEC_RE.fullmatch(compact)
    if not m:
        raise SpecError(f"invalid spec {raw!r}; {_accepted()}")
    name = _canonical_name(m.group(1))
    if name is None:
        raise SpecError(f"invalid spec {raw!r}: unknown block type {m.group(1)!r}; {_accepted()}")
    params = _FORMS[name]
    arg_text = m.group(2)
    parts = [] if arg_text is None else arg_text.split(",")
    if arg_text == "" or len(parts) != len(params):
        want = "no arguments" if not params else f"{len(params)} argument(s)"
        raise SpecError(f"invalid spec {raw!r}: {name} takes {want}; {_accepted()}")
    args = []
    for part, kind in zip(parts, params):
        am = _ARG_RE.fullmatch(part.upper())
        if am and any(g is not None and len(g.lstrip("0")) > _MAX_DIGITS for g in (am.group(1), am.group(3))):
            raise SpecError(f"invalid spec {raw!r}: {part[:20]!r}... is too large (at most {_MAX_DIGITS} digits)")
        if not am:
            raise SpecError(
                f"invalid spec {raw!r}: argument {part!r} is not an integer or N, N/d, M, M/d; {_accepted()}"
            )
        if am.group(1) is not None:
            value = int(am.group(1))
            if value < 1:
                raise SpecError(f"invalid spec {raw!r}: {part!r} must be a positive integer; {_accepted()}")
            args.append(value)
            continue
        if kind == "int":
            raise SpecError(f"invalid spec {raw!r}: {part!r} must be a positive integer here; {_accepted()}")
        base, div = am.group(2), int(am.group(3) or 1)
        if base != kind:
            hint = "N is a conv's width; M (= N/b) is the bottleneck width in BG"
            raise SpecError(f"invalid spec {raw!r}: {name} takes {kind}, not {base} ({hint}); {_accepted()}")
        if div < 1:
            raise SpecError(f"invalid spec {raw!r}: divisor in {part!r} must be positive; {_accepted()}")
        args.append(Ratio(base, div))
    return BlockSpec(name, tuple(args))
