"""Checks of the environment this package is installed in."""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, distribution

DISTRIBUTION = "saliency-kit"
# Google PAIR's saliency package installs the same import name, ``saliency``.
CLASHING_DISTRIBUTION = "saliency"


def warn_on_clashing_distribution() -> None:
    """Warn when PAIR's ``saliency`` distribution shares this environment: both install the
    import name ``saliency``, so whichever was installed last has overwritten the other's files.
    """
    try:
        other = distribution(CLASHING_DISTRIBUTION)
    except PackageNotFoundError:
        return
    if other.metadata["Name"] is None or other.metadata["Name"].lower() != CLASHING_DISTRIBUTION:
        return
    warnings.warn(
        f"the distributions {DISTRIBUTION!r} (this package) and {CLASHING_DISTRIBUTION!r} "
        f"{other.version} (Google PAIR saliency) are both installed here and both provide the "
        "import name 'saliency', so one of them is broken. Install them in separate virtual "
        f"environments (pip uninstall {CLASHING_DISTRIBUTION} {DISTRIBUTION}, then reinstall "
        "one).",
        RuntimeWarning,
        stacklevel=3,
    )
