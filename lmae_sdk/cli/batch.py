"""What the batch commands (degrade, complete, evaluate) share: finding and pairing input
files, output-folder checks and run records as click errors, and the one summary each run
ends with."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from lmae_sdk.labels import InputError
from lmae_sdk.run_record import (OutputFolderError, RunRecord, RunRecordError, Start, decide,
                                 ensure_writable_folder)
from lmae_sdk.runtime import pairing
from lmae_sdk.runtime.pairing import InputPairs

FIRST_FAILURES = 5  # failures listed in the summary; report.json / the JSON output has them all
OVERWRITE_HINT = "use --overwrite to redo every output there, or choose another output folder"


def pair_folders(images: Path, labels: Path, clashes: str = "refuse") -> InputPairs:
    """Images and labels paired by stem (:func:`lmae_sdk.runtime.pairing.pair_folders`); a
    stem that several images or several labels share is, with ``clashes="refuse"``, a click
    error naming the files, and with ``"report"`` in the result's ``clashes``."""
    try:
        return pairing.pair_folders(images, labels, clashes)
    except InputError as e:
        raise click.ClickException(str(e)) from None


def writable_folder(folder: Path, option: str) -> Path:
    """``folder`` created and proven writable, else a click error naming the option."""
    try:
        return ensure_writable_folder(folder)
    except OutputFolderError as e:
        raise click.ClickException(f"{option}: {e}") from None


def start_run(folders: list[Path], record: RunRecord, overwrite: bool,
              bookkeeping: tuple[str, ...] = ()) -> Start:
    """Resume or start ``record``'s run in every output folder (the same record in each);
    a click error saying what differs when one holds another run's outputs.  Every folder
    is checked before any record is written."""
    try:
        starts = [decide(f, record, overwrite, bookkeeping) for f in folders]
    except RunRecordError as e:
        raise click.ClickException(f"{e}; {OVERWRITE_HINT}") from None
    for folder, start in zip(folders, starts):
        if start is not Start.RESUME:
            record.write(folder)
    # folders that disagree (one resumed, one new): resume, the caller skips only outputs present in all
    return starts[0] if len(set(starts)) == 1 else Start.RESUME


def _names(paths: list[Path] | list[str], shown: int = 3) -> str:
    names = [p.name if isinstance(p, Path) else p for p in paths]
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


@dataclass
class BatchSummary:
    """Counts of one batch run and its failures: printed once, at the end."""

    command: str
    done: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # file name -> message (naming the file)
    notes: list[str] = field(default_factory=list)  # unmatched inputs: "N labels without an image in X: a, b"
    quiet_failures: set[str] = field(default_factory=set)  # failures a note already names
    resumable: bool = True  # False: the job redoes everything each time (no "skipped")

    def fail(self, name: str, why: str) -> None:
        self.failures[name] = why

    def note_unmatched(self, paths: list[Path], what: str, singular: str | None = None) -> None:
        """e.g. note_unmatched(images, "images without a partial label in /labels")."""
        if paths:
            words = what if len(paths) != 1 else (singular or what)
            self.notes.append(f"{len(paths)} {words}: {_names(paths)}")

    def headline(self) -> str:
        skipped = f"{self.skipped} skipped (already done), " if self.resumable else ""
        return f"{self.command}: {self.done} done, {skipped}{len(self.failures)} failed"

    def echo(self, details: str = "", report: str | None = None) -> None:
        """The summary: the headline with ``details``, the unmatched inputs, the first failures."""
        click.echo(self.headline() + (f"; {details}" if details else ""))
        for note in self.notes:
            click.echo(f"  {note}", err=True)
        listed = [(n, w) for n, w in self.failures.items() if n not in self.quiet_failures]
        for name, why in listed[:FIRST_FAILURES]:
            click.echo(f"  FAILED {why}" if name in why else f"  FAILED {name}: {why}", err=True)
        if len(listed) > FIRST_FAILURES:
            click.echo(f"  ... and {len(listed) - FIRST_FAILURES} more" + (f"; see {report}" if report else ""),
                       err=True)

    @property
    def exit_code(self) -> int:
        """1 when anything failed or nothing was there to do, else 0."""
        return 1 if self.failures or self.done + self.skipped == 0 else 0

    def exit(self) -> None:
        if self.exit_code:
            sys.exit(self.exit_code)
