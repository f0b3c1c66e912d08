"""An export's items one at a time for a batch job: an item that cannot be read (its image
missing or of another size than the annotations say, a corrupt mask) is handed on as an
:class:`ItemFailure` naming its image and the problem, and the items after it still come.

Iterating an :class:`~lmae_sdk.formats.common.AnnotationExport` directly stops at the first
bad item (the reader's error ends the generator); :func:`each_item` reads every item through
a view of the export holding that item alone, so one error ends one item.  Warnings still
collect in the export's own ``warnings`` list (the views share it).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator, NamedTuple

from .common import AnnotationExport, ExportItem, FormatError

# the list of items each reader keeps: its entries are tuples whose last element is the image's path
_ITEM_LISTS = {"coco": "_images", "cvat": "_items_list", "labelstudio": "_tasks"}


class ItemFailure(NamedTuple):
    """An item that could not be read: its image file and the problem (naming the file)."""

    image_path: Path
    message: str


def _problem(image: Path, error: Exception) -> str:
    if isinstance(error, ValueError) and str(image) in str(error):
        return str(error)  # FormatError / InputError name their file
    if isinstance(error, FormatError):
        return f"{image}: {error}"
    return f"{image}: {type(error).__name__}: {error}"


def each_item(export: AnnotationExport) -> Iterator[ExportItem | ItemFailure]:
    """Every item of ``export`` in order, an :class:`ItemFailure` in place of one that cannot
    be read.  An export of a kind not known here is iterated directly (its first bad item
    then ends it, as an :class:`ItemFailure` naming the export)."""
    attr = _ITEM_LISTS.get(export.format)
    entries = getattr(export, attr, None) if attr else None
    if entries is None:
        try:
            yield from export
        except Exception as e:  # noqa: BLE001 - reported as the job's failure, never a traceback
            yield ItemFailure(export.source, _problem(export.source, e))
        return
    for entry in entries:
        view = copy.copy(export)  # shallow: the warnings list is the export's own
        setattr(view, attr, [entry])
        image = Path(entry[-1])
        try:
            yield from view
        except Exception as e:  # noqa: BLE001 - one bad item is that item's failure
            yield ItemFailure(image, _problem(image, e))
