import pytest
from hypothesis import given, strategies as st

from fxswap import SpecError, parse_spec
from fxswap.spec import Ratio

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
