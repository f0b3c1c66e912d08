"""The work folder of ``lmae fit``: its record (``fit.json``) and each stage's artifact.

``fit.json`` holds the options that decide the result, a fingerprint of the dataset (the
names and sizes of its files), the plan, and every finished stage with its minutes.  A run
that finds the folder continues after the last finished stage (a finished stage whose
artifact is gone runs again, with every stage that reads it); a training stage inside itself
continues from its last checkpoint.  Another dataset or other options are refused
(the message says what differs) unless the run restarts, which empties the folder first.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from lmae_sdk.labels import atomic_write_bytes
from lmae_sdk.recipe.definition import RECIPE, definition

RECORD = "fit.json"
FORMAT = "lmae-fit"
VERSION = 2  # 2: the plan records the timings measured before it



class FitStateError(ValueError):
    """The work folder belongs to another fit (or cannot be used)."""


def data_fingerprint(pairs: dict[str, list[tuple[Path, Path]]], root: Path) -> str:
    """sha256 over every split's file names (relative to ``root``) and sizes."""
    h = hashlib.sha256()
    for split in sorted(pairs):
        for img, lab in pairs[split]:
            for p in (img, lab):
                rel = p.relative_to(root) if p.is_relative_to(root) else p
                h.update(f"{split}\t{rel}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()


class WorkFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.record: dict[str, Any] = {}

    def artifact(self, stage: str) -> Path:
        return self.path / definition(stage).artifact

    def file(self, name: str) -> Path:
        return self.path / name

    # -------------------------------------------------------------------- record
    def open(self, options: dict[str, Any], fingerprint: str, plan: Callable[[], dict[str, Any]] | dict[str, Any],
             restart: bool) -> bool:
        """Start or continue the fit in this folder; True when it continues an earlier run
        (the folder holds this fit's record).  ``plan`` is called only to start a new fit."""
        record_path = self.path / RECORD
        if self.path.exists() and not self.path.is_dir():
            raise FitStateError(f"--work {self.path}: exists and is not a folder")
        if restart and self.path.is_dir():
            if any(self.path.iterdir()) and not record_path.is_file():
                raise FitStateError(f"--work {self.path}: holds files but no {RECORD}; not emptying a folder that "
                                    f"lmae fit did not make")
            shutil.rmtree(self.path)
        if record_path.is_file():
            try:
                old = json.loads(record_path.read_text())
            except (OSError, ValueError):
                old = None
            if not isinstance(old, dict) or old.get("format") != FORMAT or old.get("version") != VERSION:
                raise FitStateError(f"{record_path}: not an lmae fit record of this lmae-sdk (format {FORMAT} "
                                    f"version {VERSION}); use another --work folder, or --restart")
            diffs = [f"options.{k}: {old['options'].get(k, '(unset)')} -> {options.get(k, '(unset)')}"
                     for k in sorted(set(old["options"]) | set(options))
                     if old["options"].get(k, "(unset)") != options.get(k, "(unset)")]
            if old.get("data_fingerprint") != fingerprint:
                diffs.append("the dataset's files changed (names or sizes)")
            if diffs:
                raise FitStateError(f"--work {self.path} holds a fit with other inputs ({'; '.join(diffs)}); "
                                    f"use --restart to start that folder over, or another --work folder")
            self.record = old
            return True
        if self.path.is_dir() and any(self.path.iterdir()):
            raise FitStateError(f"--work {self.path}: holds files but no {RECORD}; use an empty or new folder")
        plan = plan() if callable(plan) else plan
        self.path.mkdir(parents=True, exist_ok=True)
        self.record = {"format": FORMAT, "version": VERSION, "options": options, "data_fingerprint": fingerprint,
                       "plan": plan, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": {}}
        self._save()
        return False

    def load(self) -> "WorkFolder":
        """Read the record of the fit this folder holds (a stage's process: the runner opened it)."""
        self.record = json.loads((self.path / RECORD).read_text())
        return self

    def _save(self) -> None:
        atomic_write_bytes(self.path / RECORD, (json.dumps(self.record, indent=1) + "\n").encode())

    @property
    def plan(self) -> dict[str, Any]:
        return self.record["plan"]

    # -------------------------------------------------------------------- stages
    def done(self, stage: str) -> bool:
        return bool(self.record["stages"].get(stage, {}).get("done"))

    def spent(self, stage: str) -> float:
        """Minutes this stage has run so far, over every run."""
        return float(self.record["stages"].get(stage, {}).get("minutes", 0.0))

    def add_time(self, stage: str, minutes: float) -> None:
        entry = self.record["stages"].setdefault(stage, {"done": False, "minutes": 0.0})
        entry["minutes"] = round(entry["minutes"] + minutes, 3)
        self._save()

    def finish(self, stage: str, result: dict[str, Any] | None = None) -> None:
        entry = self.record["stages"].setdefault(stage, {"done": False, "minutes": 0.0})
        entry.update(done=True, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), result=result or {})
        self._save()

    def finish_from_result_file(self, stage: str) -> bool:
        """Record as finished a stage killed after writing its artifact and ``<stage>.result.json``
        but before the runner recorded it (True).  A result file without the artifact is stale:
        the stage runs again (False)."""
        path = self.path / f"{stage}.result.json"
        if self.done(stage) or not path.is_file() or not self.artifact(stage).exists():
            return False
        self.finish(stage, json.loads(path.read_text()))
        return True

    def result(self, stage: str) -> dict[str, Any]:
        return self.record["stages"].get(stage, {}).get("result", {})

    def reopen_missing(self) -> tuple[list[Path], list[str]]:
        """Finished stages whose artifact is gone from the folder, and every stage that reads one
        of them (directly or through another stage): marked unfinished, their minutes and results
        cleared, so that this run does them again.  Returns (the missing artifacts, the stages
        reopened, in the recipe's order)."""
        missing, reopened = [], []
        for d in RECIPE:
            if not self.done(d.name):
                continue
            artifact = self.artifact(d.name)
            if any(i in reopened for i in d.inputs):
                reopened.append(d.name)
            elif not artifact.exists():
                missing.append(artifact)
                reopened.append(d.name)
        for name in reopened:
            self.record["stages"].pop(name, None)
            (self.path / f"{name}.result.json").unlink(missing_ok=True)  # else run_phase would finish it again
        if reopened:
            self._save()
        return missing, reopened
