"""How every command spells lists of names and demo models, parsed in one place.

``--method`` and ``--model`` values are repeatable and comma-separated (``--method
gradcam,gradient --method smoothgrad``); a demo model is named as ``saliency explain --model``
takes it, ``demo:shapes``, or by its bare name, ``shapes``. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from saliency.cli import UsageError

DEMO_SOURCE = "demo"
"""The model-source prefix of the demo models (``demo:NAME``, the entry point in the
``saliency.model_sources`` group of pyproject.toml)."""


def split_names(values: Sequence[str] | None) -> list[str]:
    """Repeated and comma-separated values as one list: stripped, empty parts dropped, each
    name once, in the order given."""
    names: list[str] = []
    for value in values or ():
        for name in (part.strip() for part in value.split(",")):
            if name and name not in names:
                names.append(name)
    return names


def demo_model_names(
    values: Sequence[str] | None, known_models: Iterable[str], installed: Iterable[str] = ()
) -> list[str]:
    """The demo models named by ``--model`` values (``demo:NAME`` or ``NAME``, or ``all``: every
    installed one), as bare names.

    Raises:
        UsageError: A name that is not a demo model, or values that name none.
    """
    known = sorted(known_models)
    names: list[str] = []
    for text in split_names(values):
        if text == "all":
            names += [name for name in installed if name not in names]
            continue
        prefix, colon, rest = text.partition(":")
        name = rest if colon and prefix == DEMO_SOURCE else text
        if name not in known:
            spelled = ", ".join(f"{DEMO_SOURCE}:{model}" for model in known)
            raise UsageError(
                f"--model {text!r} is not a demo model; accepted: {spelled} (or the bare names "
                f"{', '.join(known)}), repeatable or comma-separated, or all"
            )
        if name not in names:
            names.append(name)
    if values and not names:
        raise UsageError("--model is empty; accepted: " + ", ".join(known))
    return names
