import pytest
from hypothesis import given, settings, strategies as st

from fxswap import SpecError, parse_spec
from fxswap.surgery.spec import Ratio

CANONICAL = ["S", "S-2x2", "I", "G(2)", "G(16)", "G(N/4)", "G(N)", "B(2)", "B(4)", "BG(2,4)", "BG(2,M/8)", "BG(4,M)"]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_forms_round_trip(text):
    assert str(parse_spec(text)) == text
    assert parse_spec(str(parse_spec(text))) == parse_spec(text)


@given(kind=st.sampled_from(["G", "BG"]), b=st.integers(1, 64), d=st.integers(1, 64), ratio=st.booleans(),
       spaces=st.booleans(), lower=st.booleans())
def test_generated_specs_round_trip(kind, b, d, ratio, spaces, lower):
    base = "N" if kind == "G" else "M"
    g = (base if d == 1 else f"{base}/{d}") if ratio else str(d)
    canonical = f"G({g})" if kind == "G" else f"BG({b},{g})"
    text = canonical.replace(",", " , ") if spaces else canonical
    text = text.lower() if lower else text
    spec = parse_spec(text)
    assert str(spec) == canonical
    groups = spec.groups.value
    assert groups == (Ratio(base, d) if ratio else d)


def test_parts():
    s = parse_spec("BG(2,M/4)")
    assert s.kind == "BG" and s.bottleneck == 2 and s.groups.resolve(32) == 8
    assert parse_spec("G(4)").groups.resolve(64) == 4
    assert parse_spec("S").groups is None and parse_spec("S").bottleneck is None


@pytest.mark.parametrize("bad", ["", "X", "G", "G()", "G(0)", "G(3.5)", "G(M/4)", "BG(2,N/4)", "B(N)", "BG(2)",
                                 "G(4", "S(2)", "__import__('os')", "G(1,2)", "B(-1)", "G(N/0)"])
def test_invalid_specs_raise_spec_error_listing_forms(bad):
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    assert "accepted forms" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_non_string_rejected():
    with pytest.raises(SpecError):
        parse_spec(4)


def test_ratio_requires_divisibility():
    with pytest.raises(SpecError, match="divisible by 8"):
        Ratio("N", 8).resolve(12)


@pytest.mark.parametrize("bad", ["G(4)x", "S)", "G(4))", "B(2)B(2)", "I()"])
def test_trailing_garbage_is_rejected(bad):
    with pytest.raises(SpecError):
        parse_spec(bad)


@pytest.mark.parametrize("bad", ["G(" + "9" * 5000 + ")", "BG(2,M/" + "7" * 40 + ")", "B(1" + "0" * 12 + ")"])
def test_huge_integers_are_spec_errors_with_short_messages(bad):
    with pytest.raises(SpecError) as err:
        parse_spec(bad)
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("bad", ["G(\u0664)", "G(\uff14)", "G(N/\u0664)", "B(2)\u00a0", "G(\u00a04)", "\uff27(4)"])
def test_non_ascii_digits_and_spaces_are_refused(bad):
    with pytest.raises(SpecError, match="not ASCII"):
        parse_spec(bad)


def test_plan_objects_are_checked():
    from fxswap import find_blocks, resolve_plan
    from fxswap.models import wrn

    blocks = find_blocks(wrn(10, 1))
    with pytest.raises(SpecError, match="strings"):
        resolve_plan(blocks, {1: "G(4)"})
    with pytest.raises(SpecError, match="strings"):
        resolve_plan(blocks, {("layer1.*",): "G(4)"})
    many = {f"nope{i}.*": "S" for i in range(2_000)}
    with pytest.raises(SpecError) as err:
        resolve_plan(blocks, many)
    assert "2000 in all" in str(err.value) and len(str(err.value)) < 1000
    with pytest.raises(SpecError):
        resolve_plan(blocks, b"G(4)")


_SPEC_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="SBGINMsbgi()/,-x2 0123456789\u0664\uff14\u00a0", max_size=16),
    st.sampled_from(["S", "I", "G(4)", "B(2)", "BG(2,M/4)", "S-2x2"]).map(lambda s: s + "x"),
)
_PLAN = st.recursive(
    st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), _SPEC_TEXT, st.binary(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(_SPEC_TEXT, st.integers()),
                                                                             inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None)
@given(text=_SPEC_TEXT)
def test_fuzz_spec_strings_parse_or_raise_spec_error(text):
    try:
        spec = parse_spec(text)
    except SpecError:
        return
    assert parse_spec(str(spec)) == spec


@settings(max_examples=60, deadline=None)
@given(plan=_PLAN)
def test_fuzz_plans_resolve_or_raise_fxswap_error(plan):
    from fxswap import FxswapError, resolve_plan
    from fxswap.blocks import Block

    blocks = [Block(f"layer{i}.0", i, i, 8, 8, 1, 3, ("c",), "pre", "identity") for i in range(1, 4)]
    try:
        out = resolve_plan(blocks, plan)
    except FxswapError:
        return
    assert set(out) == {b.name for b in blocks}
