"""What a registered method is, for people: read from its class (never a hand-kept list).

``saliency methods`` prints it and the gallery shows it, both from :func:`describe_method`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from saliency.errors import UnknownMethodError
from saliency.methods.registry import get_method

_ARXIV = re.compile(r"arXiv:(\d{4}\.\d{4,5})(v\d+)?", re.IGNORECASE)


@dataclass(frozen=True)
class MethodInfo:
    """A method's description.

    Attributes:
        name: The registered name (or the name found in a run folder).
        registered: Whether this environment's registry knows the method.
        summary: The first line of the class docstring.
        formula: The LaTeX of the docstring's ``.. math::`` blocks, one per line.
        details: The rest of the docstring's first section, reflowed to one paragraph.
        paper: The method class's ``paper`` attribute.
        paper_url: An arXiv link when the paper names an arXiv id.
        output: ``"input"`` or ``"layer"`` (the method's output space).
        defaults: Every option (init field) with its default value as text (``required``
            when it has none).
    """

    name: str
    registered: bool
    summary: str = ""
    formula: str = ""
    details: str = ""
    paper: str = ""
    paper_url: str | None = None
    output: str = ""
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)


def describe_method(name: str) -> MethodInfo:
    """Describe the registered method ``name`` from its class, docstring and ``paper``.

    An unregistered name (e.g. a plugin that is not installed here) gives a bare description.
    """
    try:
        method = get_method(name)
    except UnknownMethodError:
        return MethodInfo(name=name, registered=False)
    formula, details = split_docstring(inspect.getdoc(method) or "")
    paper = str(getattr(method, "paper", "") or "")
    found = _ARXIV.search(paper) or _ARXIV.search(details)
    return MethodInfo(
        name=name,
        registered=True,
        summary=method.summary(),
        formula=formula,
        details=details,
        paper=paper,
        paper_url=f"https://arxiv.org/abs/{found.group(1)}" if found else None,
        output=str(getattr(method, "output", "")),
        defaults={f.name: _default(f) for f in dataclasses.fields(method) if f.init},
    )


def split_docstring(docstring: str) -> tuple[str, str]:
    """The ``.. math::`` blocks and the prose of a docstring's first section (before ``Options:``).

    Returns:
        ``(formula, details)``: the LaTeX lines joined by newlines (blocks separated by a blank
        line), and the prose after the
        summary line, reflowed, without reST roles such as double back-quotes.
    """
    lines = docstring.splitlines()[1:]
    blocks: list[list[str]] = []
    prose: list[str] = []
    in_math = False
    for line in lines:
        stripped = line.strip()
        if re.fullmatch(r"[A-Z][A-Za-z ]*:", stripped):  # Options:, Args:, Attributes: ...
            break
        if stripped.startswith(".. math::"):
            in_math = True
            blocks.append([stripped.removeprefix(".. math::").strip()])
            continue
        if in_math and line.startswith((" ", "\t")) and stripped:
            blocks[-1].append(stripped)
            continue
        in_math = False
        prose.append(stripped)
    details = " ".join(" ".join(prose).split())
    details = re.sub(r"(:[a-z]+)*:`([^`]*)`|``([^`]*)``", lambda m: m[2] or m[3] or "", details)
    formula = "\n\n".join("\n".join(line for line in block if line) for block in blocks)
    return textwrap.dedent(formula), details


def _default(option: dataclasses.Field[Any]) -> str:
    if option.default is not dataclasses.MISSING:
        return repr(option.default)
    if option.default_factory is not dataclasses.MISSING:
        return repr(option.default_factory())
    return "required"
