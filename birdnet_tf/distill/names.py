"""Matching a teacher's species names onto a student's labels.

Teachers name species in their own way: BirdNET's labels are ``Genus species_Common name``,
BirdNET-Analyzer's CSV has separate ``Scientific name`` and ``Common name`` columns, Raven
tables only ``Common Name`` and ``Species Code``. :class:`SpeciesMatcher` maps any of them onto
a student's labels: by scientific name first (case, spacing and underscores ignored), then by
common name (from the student's ``Genus species_Common name`` labels or a given
label → common-name dict). Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["SpeciesMatcher", "normalise_name", "split_birdnet_label"]


def normalise_name(name: str) -> str:
    """``name`` folded for matching: case-insensitive, ``_`` and runs of whitespace as one space."""
    return " ".join(str(name).replace("_", " ").casefold().split())


def split_birdnet_label(label: str) -> tuple[str, str | None]:
    """``("Genus species", "Common name")`` of a BirdNET label ``Genus species_Common name``;
    ``(label, None)`` for a label without ``_`` (a plain scientific or common name)."""
    label = str(label).strip()
    if "_" in label:
        sci, common = label.split("_", 1)
        if sci.strip() and common.strip():
            return sci.strip(), common.strip()
    return label, None


class SpeciesMatcher:
    """Maps teacher species names onto a student's label order.

    Args:
        labels: The student's labels (scientific names, ``Genus species_Common name`` BirdNET
            labels, or common names).
        common_names: Optional ``{label: common name}`` (e.g. a catalog's ``common_name``),
            used for the common-name fallback.

    :meth:`match` counts the names it could not map; :meth:`unmapped` lists them with their
    counts, so a reader reports each unmapped name once.
    """

    def __init__(self, labels: Iterable[str], common_names: Mapping[str, str] | None = None) -> None:
        self.labels = list(labels)
        self._sci: dict[str, int] = {}
        self._common: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            sci, common = split_birdnet_label(label)
            self._sci.setdefault(normalise_name(label), i)
            self._sci.setdefault(normalise_name(sci), i)
            if common:
                self._common.setdefault(normalise_name(common), i)
            else:  # a label that is a common name matches by common name too
                self._common.setdefault(normalise_name(label), i)
        for label, common in (common_names or {}).items():
            if label in self.labels and isinstance(common, str) and common.strip():
                self._common.setdefault(normalise_name(common), self.labels.index(label))
        self._unmapped: Counter[str] = Counter()

    def match(self, scientific: str | None = None, common: str | None = None, count: int = 1) -> int | None:
        """The student label index of a species, or ``None`` (then counted as unmapped).

        Args:
            scientific: A scientific name, or a BirdNET label ``Genus species_Common name``
                (then its common part is the fallback when ``common`` is not given).
            common: The common name, tried when the scientific name does not match.
            count: How many rows (or columns) carry this name, for the unmapped counts.
        """
        sci = scientific.strip() if isinstance(scientific, str) and scientific.strip() else None
        com = common.strip() if isinstance(common, str) and common.strip() else None
        if sci is not None:
            whole = self._sci.get(normalise_name(sci))
            if whole is not None:
                return whole
            part, label_common = split_birdnet_label(sci)
            hit = self._sci.get(normalise_name(part))
            if hit is not None:
                return hit
            com = com or label_common
        if com is not None:
            hit = self._common.get(normalise_name(com))
            if hit is not None:
                return hit
        if count:
            self._unmapped[sci or com or "?"] += count
        return None

    def unmapped(self) -> list[tuple[str, int]]:
        """``(name, how many times it was seen)`` of every name that did not map, most frequent first."""
        return self._unmapped.most_common()

    def unmapped_summary(self, what: str = "rows", limit: int = 8) -> str | None:
        """One line naming the unmapped species and their counts, or ``None`` when all mapped."""
        items = self.unmapped()
        if not items:
            return None
        shown = ", ".join(f"{name} ({n})" for name, n in items[:limit])
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return (f"{len(items)} species name(s) match none of the student's {len(self.labels)} labels and are "
                f"ignored ({sum(n for _, n in items)} {what}): {shown}{more}")
