"""Method plugins and their registry.

Each built-in method lives in its own module and is found through the ``saliency.methods``
entry-point group, like any third-party plugin.
"""

from saliency.methods.base import Method
from saliency.methods.registry import (
    ENTRY_POINT_GROUP,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Method",
    "get_method",
    "list_methods",
    "register_method",
    "unregister_method",
]
