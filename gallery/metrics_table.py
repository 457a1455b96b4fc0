"""The gallery's metrics table: ``metrics.json`` rows as columns grouped by what they measure.

Columns are sorted into groups (localisation, faithfulness, robustness, sanity, complexity,
model, run, other) by name patterns, so a new column of a known kind (``sanity_<layer>``,
``road_<order>``) joins its group without a change here, and an unknown one lands in "other".
A column ``<metric>`` with ``<metric>_low`` and ``<metric>_high`` beside it is shown as one
cell, the value over its interval (``0.812`` / ``[0.723, 0.881]``). Rows that are controls
rather than methods (``baseline:<name>``, ``control:<name>``, ``random:<name>``, or a row with
``"control": true``) are marked so the page can set them apart.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from saliency.gallery.page import format_number

__all__ = ["GROUPS", "Cell", "Column", "Group", "MetricsTable", "Row", "metrics_table"]

GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (title, prefix dropped from the column headers, name patterns), first match wins
    (
        "Localisation",
        "",
        ("pointing_game*", "relevance_mass*", "relevance_rank*", "marker_*", "object_*"),
    ),
    (
        "Faithfulness",
        "",
        ("deletion*", "insertion*", "road*", "morf*", "lerf*", "faithfulness*", "infidelity*"),
    ),
    (
        "Robustness",
        "robustness_",
        ("robustness*", "random_robustness*", "fragility*", "*invariance*", "sensitivity*"),
    ),
    ("Sanity", "sanity_", ("sanity_*", "random_logit*", "randomisation*", "mprt*")),
    ("Complexity", "", ("sparseness*", "complexity*", "gini*", "entropy*")),
    ("Model", "", ("accuracy*", "*_accuracy*")),
    ("Run", "", ("seconds*", "*_seconds", "time*", "images_per_second*")),
)
OTHER = "Other"
_KEYS = ("model", "method")
_CONTROL_PREFIXES = ("baseline:", "control:", "random:")
_LOW, _HIGH = "_low", "_high"


@dataclass(frozen=True)
class Column:
    """One metric column: its key in the rows, its header text, and its interval keys."""

    key: str
    label: str
    low: str | None = None
    high: str | None = None


@dataclass(frozen=True)
class Group:
    """Adjacent columns under one header."""

    title: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Cell:
    """A table cell: the value as text, its interval as text (or None), numeric or not."""

    text: str
    interval: str | None = None
    number: bool = True


@dataclass(frozen=True)
class Row:
    """A table row: model, method, its cells group by group, and whether it is a control."""

    model: str
    method: str
    groups: tuple[tuple[Cell, ...], ...]
    control: bool

    @property
    def cells(self) -> tuple[Cell, ...]:
        """Every cell, in column order."""
        return tuple(cell for group in self.groups for cell in group)


@dataclass(frozen=True)
class MetricsTable:
    """What the template draws: grouped columns, rows and the notes."""

    groups: tuple[Group, ...]
    rows: tuple[Row, ...]
    notes: str | None

    @property
    def columns(self) -> tuple[Column, ...]:
        """Every column, in display order."""
        return tuple(column for group in self.groups for column in group.columns)


def metrics_table(metrics: dict[str, Any] | None, digits: int = 3) -> MetricsTable | None:
    """The table of a ``metrics.json`` document (``None`` without rows)."""
    if not metrics or not isinstance(metrics.get("rows"), list):
        return None
    rows = [row for row in metrics["rows"] if isinstance(row, dict)]
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in _KEYS and k not in keys and not _flag(k, row))
    columns = _columns(keys)
    groups: dict[str, list[Column]] = {}
    for column in columns:
        groups.setdefault(_group_of(column.key), []).append(column)
    order = [title for title, _, _ in GROUPS] + [OTHER]
    grouped = tuple(
        Group(title, tuple(_labelled(c, title) for c in groups[title]))
        for title in order
        if title in groups
    )
    table_rows = tuple(
        Row(
            str(row.get("model", "—")),
            str(row.get("method", "—")),
            tuple(tuple(_cell(row, c, digits) for c in group.columns) for group in grouped),
            _is_control(row),
        )
        for row in rows
    )
    notes = metrics.get("notes")
    return MetricsTable(grouped, table_rows, notes if isinstance(notes, str) else None)


def _flag(key: str, row: dict[str, Any]) -> bool:
    """``"control": true`` marks the row; it is not a column."""
    return key == "control" and isinstance(row[key], bool)


def _columns(keys: list[str]) -> list[Column]:
    """Columns in first-seen order; ``x_low``/``x_high`` fold into ``x`` when all three exist."""
    present = set(keys)
    folded = {
        suffix_key
        for key in keys
        if key + _LOW in present and key + _HIGH in present
        for suffix_key in (key + _LOW, key + _HIGH)
    }
    return [
        Column(key, key, key + _LOW, key + _HIGH) if key + _LOW in folded else Column(key, key)
        for key in keys
        if key not in folded
    ]


def _group_of(key: str) -> str:
    for title, _, patterns in GROUPS:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            return title
    return OTHER


def _labelled(column: Column, group: str) -> Column:
    """The header text: the key without its group's prefix, underscores as spaces."""
    prefix = next((p for title, p, _ in GROUPS if title == group), "")
    label = column.key.removeprefix(prefix) if prefix and column.key != prefix else column.key
    return Column(column.key, label.replace("_", " "), column.low, column.high)


def _is_control(row: dict[str, Any]) -> bool:
    method = row.get("method")
    return row.get("control") is True or (
        isinstance(method, str) and method.startswith(_CONTROL_PREFIXES)
    )


def _cell(row: dict[str, Any], column: Column, digits: int) -> Cell:
    value = row.get(column.key)
    number = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    text = format_number(value, digits)
    if column.low is None or column.high is None:
        return Cell(text, None, number)
    low, high = row.get(column.low), row.get(column.high)
    if low is None and high is None:
        return Cell(text, None, number)
    return Cell(text, f"[{format_number(low, digits)}, {format_number(high, digits)}]", number)
