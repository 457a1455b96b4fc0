"""The ``saliency`` command (:mod:`saliency.cli.main`)."""


class UsageError(ValueError):
    """A command-line or set-up problem found before any work (exit code 2)."""
