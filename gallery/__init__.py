"""Static HTML gallery of explanations (built from a ``saliency explain`` run folder).

>>> from saliency.gallery import build_gallery
>>> build_gallery("runs/cats")              # → runs/cats/index.html and runs/cats/gallery/

:func:`build_gallery_from_explanations` writes a run folder from :class:`saliency.Explanation`
results first, then builds the same gallery.
"""

from saliency.gallery.builder import GalleryError, build_gallery
from saliency.gallery.from_explanations import build_gallery_from_explanations, write_run_folder

__all__ = ["GalleryError", "build_gallery", "build_gallery_from_explanations", "write_run_folder"]
