"""The ``saliency`` command."""
