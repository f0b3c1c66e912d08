"""Pairing a folder of images with a folder of labels by file stem: the one pairing that the
data-pipeline adapters (:func:`folder_pairs`) and the batch commands (``lmae complete``,
``lmae visualize``, ``lmae demo``) use.

A stem that several images share (``a.png`` and ``a.jpg``), or several labels (``a.png`` and
``a.PNG``), is never paired by a guess: it is refused with an
:class:`~lmae_sdk.labels.InputError` naming the files, or, on request, reported per label.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..inputs import ambiguous_stems, stem_clash
from ..labels import clash_error, images_by_stem, label_files

CLASH_HANDLING = ("refuse", "report")


@dataclass
class InputPairs:
    """Images and labels matched by stem."""

    pairs: list[tuple[Path, Path, str]]  # (image, label, stem), sorted by label name
    labels_without_image: list[Path]  # sorted by name
    images_without_label: list[Path]  # sorted by stem, then name
    clashes: dict[Path, str] = field(default_factory=dict)  # label -> why it has no pair (its stem is shared)


def pair_folders(images: str | os.PathLike, labels: str | os.PathLike, clashes: str = "refuse") -> InputPairs:
    """Images and labels (label PNGs) paired by stem.  A stem that several images or several
    labels share: ``clashes="refuse"`` raises an :class:`~lmae_sdk.labels.InputError` naming
    the files of the first such stem (images are checked before labels), before any pair is
    made; ``"report"`` leaves that stem's labels out of the pairs, each in ``clashes`` with
    the problem (a batch job fails them and carries on)."""
    if clashes not in CLASH_HANDLING:
        raise ValueError(f"clashes must be one of {CLASH_HANDLING}, got {clashes!r}")
    images, labels = Path(images), Path(labels)
    by_stem, shared_images = images_by_stem(images)
    shared_labels = ambiguous_stems(labels, (".png",))
    if clashes == "refuse":
        for folder, shared, what in ((images, shared_images, "images"), (labels, shared_labels, "labels")):
            if shared:
                raise clash_error(folder, shared, what)
    why = {stem: stem_clash(stem, files, "images") for stem, files in shared_images.items()}
    why.update({stem: stem_clash(stem, files, "labels") for stem, files in shared_labels.items()})
    label_paths = label_files(labels)
    pairs, orphans, clashed = [], [], {}
    for lab in label_paths:
        img = by_stem.get(lab.stem)
        if lab.stem in why:
            clashed[lab] = why[lab.stem]
        elif img is None:
            orphans.append(lab)
        else:
            pairs.append((img, lab, lab.stem))
    labelled = {lab.stem for lab in label_paths}
    every_image = [*by_stem.values(), *(f for files in shared_images.values() for f in files)]
    lonely = sorted((p for p in every_image if p.stem not in labelled), key=lambda p: (p.stem, p.name))
    return InputPairs(pairs, orphans, lonely, clashed)


def folder_pairs(images: str | os.PathLike, labels: str | os.PathLike) -> list[tuple[Path | None, Path, str]]:
    """(image path or None when missing, label path, stem) for every label PNG, sorted by
    label.  Two images (or two labels, ``a.png`` and ``a.PNG``) of one stem: an
    :class:`~lmae_sdk.labels.InputError` naming them, before any pair is made
    (:func:`pair_folders` with ``clashes="refuse"``)."""
    found = pair_folders(images, labels)
    missing = [(None, lab, lab.stem) for lab in found.labels_without_image]
    return sorted([*found.pairs, *missing], key=lambda pair: pair[1])
