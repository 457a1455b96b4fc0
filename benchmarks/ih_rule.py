"""Integrated Hessians: the single-integral rule against the nested α × β product rule.

    python -m benchmarks.ih_rule [--models shapes,shapes-shortcut,shapes-rrr] [--scenes 8]
                                [--reference 256] [--out benchmarks/IH_RULE.md]
                                [--results benchmarks/RESULTS.md] [--smoke]

The bracket of Integrated Hessians' double integral depends on α and β only through s = αβ, so
∫∫ g(αβ) dα dβ = ∫ g(s) (−ln s) ds: ``integrated_hessians`` evaluates that single integral with
the Gauss rule for the weight −ln s (``steps`` nodes, one gradient and one Hessian-vector product
each). The rule it replaced took ``inner × outer`` Gauss–Legendre node pairs in α and β; it is
rebuilt here as a subclass that only changes :meth:`IntegratedHessians.rule`, so both run through
the same code.

For each demo model inside ``saliency.smooth_relu`` (Softplus β = 10, as the demo explains them),
on the first ``--scenes`` scenes of its test split, explained for the predicted class with the
demo's default query (each scene's top 1% pixels of 16-step integrated gradients, resolved once
and passed explicitly, so that a run's passes are its rule's alone), every rule is compared with
a ``--reference``-node single-integral run: relative error ‖a − a_ref‖₂ / ‖a_ref‖₂, mean and
max over the scenes, and gradient passes per image counted by a wrapper of the model. Counting
passes is not timing: the numbers do not depend on the machine. One torch thread.
"""

from __future__ import annotations

import argparse
import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

import saliency
from benchmarks.ig_auto import CONFIGS, Counting, cost_at, cost_text, demo_scenes, relative_error
from benchmarks.report import write_section
from saliency.methods.integrated_gradients import gauss_legendre
from saliency.methods.integrated_hessians import IntegratedHessians, top_pixels
from saliency.output_files import write_text_atomic

PRODUCT_STEPS = (2, 4, 8, 16)
SINGLE_STEPS = (2, 4, 8, 12, 16, 20, 24, 32, 64)
PREVIOUS_DEFAULT = 8
"""The product rule's former default, 8 × 8 node pairs."""


@dataclass(frozen=True)
class ProductRule(IntegratedHessians):
    """The nested rule: ``outer_steps × inner_steps`` Gauss–Legendre pairs, s = α_m β_l."""

    inner_steps: int = PREVIOUS_DEFAULT
    outer_steps: int = PREVIOUS_DEFAULT

    def rule(self, device: torch.device) -> tuple[Tensor, Tensor]:
        alpha, alpha_w = gauss_legendre(self.inner_steps, device)
        beta, beta_w = gauss_legendre(self.outer_steps, device)
        scale = (beta[:, None] * alpha[None, :]).flatten()
        return scale, (beta_w[:, None] * alpha_w[None, :]).flatten()


@dataclass(frozen=True)
class Row:
    rule: str
    passes: float
    error: Tensor


def run_model(
    name: str, scenes: int, reference_steps: int, product: tuple[int, ...], single: tuple[int, ...]
) -> list[Row]:
    model, inputs = demo_scenes(name, scenes)
    counting = Counting(model)
    rows = []
    with saliency.smooth_relu(model):
        with torch.no_grad():
            target = model(inputs).argmax(1)
        relevance = saliency.explain(
            model, inputs, "integrated_gradients", target=target, steps=16
        ).attributions
        query = top_pixels(relevance.abs().sum(1), 0.01)[:, None].expand_as(inputs)

        def run(method: IntegratedHessians) -> tuple[Tensor, float]:
            counting.gradient_rows = 0
            attributions = saliency.explain(counting, inputs, method, target=target).attributions
            return attributions.detach(), counting.gradient_rows / len(inputs)

        reference, _ = run(IntegratedHessians(query=query, steps=reference_steps))

        def row(label: str, method: IntegratedHessians) -> Row:
            attributions, passes = run(method)
            return Row(label, passes, relative_error(attributions, reference))

        half = row(
            f"single integral, {reference_steps // 2} nodes (the reference's own error)",
            IntegratedHessians(query=query, steps=reference_steps // 2),
        )
        rows.append(Row(half.rule, float("nan"), half.error))  # a reference: no pass count
        for m in product:
            method = ProductRule(query=query, inner_steps=m, outer_steps=m)
            label = f"nested α × β, {m} × {m} pairs"
            if m == PREVIOUS_DEFAULT:
                label += " (the former default)"
            rows.append(row(label, method))
        for n in single:
            label = f"single integral, {n} nodes"
            if n == IntegratedHessians.steps:
                label += " (the default)"
            rows.append(row(label, IntegratedHessians(query=query, steps=n)))
    return rows


def table(name: str, rows: list[Row]) -> list[str]:
    lines = [
        f"### demo:{name}",
        "",
        "| rule | gradient + Hessian-vector passes / image | relative error, mean (max) |",
        "|---|---|---|",
    ]
    for r in rows:
        passes = "–" if math.isnan(r.passes) else f"{r.passes:.0f}"
        lines.append(f"| {r.rule} | {passes} | {r.error.mean():.2e} ({r.error.max():.2e}) |")
    return [*lines, ""]


def summary(results: dict[str, list[Row]]) -> list[str]:
    lines = [
        f"### Against the former default ({PREVIOUS_DEFAULT} × {PREVIOUS_DEFAULT} pairs)",
        "",
        "| model | nested 8 × 8: passes, error | single integral, default: passes, error "
        "| single-integral passes at the nested 8 × 8 error, interpolated (ratio) |",
        "|---|---|---|---|",
    ]
    for name, rows in results.items():
        former = next(r for r in rows if "former default" in r.rule)
        default = next(r for r in rows if "(the default)" in r.rule)
        single = [r for r in rows if r.rule.startswith("single") and not math.isnan(r.passes)]
        passes = cost_at([(r.passes, float(r.error.mean())) for r in single], former.error.mean())
        matched = cost_text(passes, former.passes)
        lines.append(
            f"| demo:{name} | {former.passes:.0f}, {former.error.mean():.2e} "
            f"| {default.passes:.0f}, {default.error.mean():.2e} | {matched} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--reference", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument(
        "--results", type=Path, default=None, help="also write the summary as a section here"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    product, single, models = PRODUCT_STEPS, SINGLE_STEPS, args.models.split(",")
    if args.smoke:
        args.scenes, args.reference = 1, 8
        product, single = (2, PREVIOUS_DEFAULT), (2, IntegratedHessians.steps)
        models = models[:1]
    results = {}
    for name in models:
        results[name] = run_model(name, args.scenes, args.reference, product, single)
        print("\n".join(table(name, results[name])), flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "## Integrated Hessians: single integral in s = αβ against the nested α × β rule",
        "",
        f"{stamp}; torch {torch.__version__}, {platform.machine()}; {args.scenes} scenes per "
        f"model inside `smooth_relu` (Softplus β = 10), the demo's default query; reference "
        f"{args.reference} single-integral nodes; one thread; `python -m benchmarks.ih_rule`.",
        "",
    ]
    lines = header + summary(results) + [line for n, r in results.items() for line in table(n, r)]
    print("\n".join(summary(results)))
    if args.out is not None:
        write_text_atomic(args.out, "\n".join(lines))
    if args.results is not None:
        details = f"Details per rule: [{args.out.name}]({args.out.name})." if args.out else ""
        write_section(args.results, "ih_rule", "\n".join([*header, *summary(results), details]))


if __name__ == "__main__":
    main()
