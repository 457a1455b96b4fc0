"""``python -m saliency.cli``."""

from saliency.cli.launch import console

console()
