"""Side-by-side benchmarks of saliency-kit against captum and pytorch-grad-cam.

Run ``python -m benchmarks.run --help`` from the repository root; see ``benchmarks/README.md``.
This folder is not installed with the package (it is not in ``pyproject.toml``'s package list).
"""
