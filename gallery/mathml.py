"""LaTeX formulas of method docstrings as MathML, converted when the gallery is built.

Browsers render MathML natively, so the page needs no script, font or CDN and works from
``file://``. The converter's output is parsed and re-serialised through an allow-list of MathML
elements and attributes: a plugin's docstring is not trusted (``\\text{<script>…}`` comes out
of the converter verbatim), and anything outside the list falls back to the escaped source.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from markupsafe import Markup

_NAMESPACE = "http://www.w3.org/1998/Math/MathML"
_ELEMENTS = frozenset(
    [
        "math",
        "mrow",
        "mi",
        "mn",
        "mo",
        "mtext",
        "mspace",
        "msub",
        "msup",
        "msubsup",
        "munder",
        "mover",
        "munderover",
        "mfrac",
        "msqrt",
        "mroot",
        "mstyle",
        "mtable",
        "mtr",
        "mtd",
        "mpadded",
        "mphantom",
        "menclose",
        "merror",
        "ms",
        "semantics",
        "annotation",
    ]
)
_ATTRIBUTES = frozenset(
    [
        "display",
        "mathvariant",
        "stretchy",
        "fence",
        "form",
        "separator",
        "accent",
        "accentunder",
        "width",
        "height",
        "depth",
        "lspace",
        "rspace",
        "columnalign",
        "columnspacing",
        "rowspacing",
        "displaystyle",
        "scriptlevel",
        "linethickness",
        "movablelimits",
        "largeop",
        "symmetric",
        "minsize",
        "maxsize",
        "notation",
    ]
)


def tex_to_mathml(tex: str) -> Markup | None:
    """``tex`` as one display-style ``<math>`` element, or ``None`` if it cannot be converted
    safely (the caller then shows the escaped LaTeX source)."""
    try:
        from latex2mathml.converter import convert

        converted = convert(" ".join(tex.split()), display="block")
        root = ElementTree.fromstring(converted)
    except Exception:  # any converter or parser failure: show the source instead
        return None
    if not _allowed(root):
        return None
    # In HTML the <math> element is MathML by itself: no namespace URL on the page.
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return Markup(ElementTree.tostring(root, encoding="unicode"))


def formula_to_mathml(formula: str) -> Markup | None:
    """Each blank-line-separated block of ``formula`` as its own ``<math>`` element, or ``None``
    when any block cannot be converted safely."""
    blocks = [block for block in formula.split("\n\n") if block.strip()]
    converted: list[Markup] = []
    for block in blocks:
        markup = tex_to_mathml(block)
        if markup is None:
            return None
        converted.append(markup)
    return Markup("").join(converted) if converted else None


def _allowed(element: ElementTree.Element) -> bool:
    namespace, _, name = element.tag.rpartition("}")
    if namespace.lstrip("{") != _NAMESPACE or name not in _ELEMENTS:
        return False
    if any(key not in _ATTRIBUTES for key in element.attrib):
        return False
    return all(_allowed(child) for child in element)
