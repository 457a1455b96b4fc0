"""Formulas as MathML: converted at build time, and nothing unsafe gets through."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest

import saliency
from saliency.gallery.mathml import tex_to_mathml
from saliency.method_info import describe_method


def test_every_method_registered_one_by_one_has_a_formula() -> None:
    # Family members (captum:NAME) wrap another library's docstring, which has none.
    missing = [n for n in saliency.list_methods(families=False) if not describe_method(n).formula]
    assert missing == []


@pytest.mark.parametrize(
    "name", [n for n in saliency.list_methods() if describe_method(n).formula]
)
def test_every_registered_formula_converts(name: str) -> None:
    formula = describe_method(name).formula
    for block in formula.split("\n\n"):
        markup = tex_to_mathml(block)
        assert markup is not None, block
        root = ElementTree.fromstring(str(markup))
        assert root.tag == "math"
        assert root.get("display") == "block"
        assert "\\" not in "".join(root.itertext())  # no TeX command left as text


def test_fraction_and_subscript_structure() -> None:
    markup = tex_to_mathml(r"\alpha_k = \frac{1}{hw}")
    assert markup is not None
    root = ElementTree.fromstring(str(markup))
    names = {element.tag for element in root.iter()}
    assert {"msub", "mfrac", "mi", "mn"} <= names


@pytest.mark.parametrize(
    "tex",
    [
        r"\text{<script>alert(1)</script>} x",
        r"\text{<img src=x onerror=alert(1)>}",
        r"\text{<b>bold</b>}",
        r"\frac{",
        "x & y",
    ],
)
def test_hostile_or_broken_tex_falls_back_to_none(tex: str) -> None:
    assert tex_to_mathml(tex) is None


def test_quotes_in_text_are_escaped_not_attributes() -> None:
    markup = tex_to_mathml(r'\text{a " onload="x}')
    assert markup is not None
    root = ElementTree.fromstring(str(markup))
    assert all(set(element.attrib) <= {"display"} for element in root.iter())
    assert 'a " onload="x' in "".join(root.itertext()).replace("\xa0", " ")


def test_each_math_block_becomes_its_own_element() -> None:
    from saliency.gallery.mathml import formula_to_mathml

    markup = formula_to_mathml("a = 1\n+ b\n\nc = 2")
    assert markup is not None and str(markup).count("<math ") == 2
    assert formula_to_mathml("a = 1\n\n\\text{<script>x</script>}") is None
    assert formula_to_mathml("") is None
