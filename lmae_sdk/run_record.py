"""Run records: what made the files in an output folder, so that a rerun resumes only the
run that started them and never mixes in outputs of other options or another model.

A batch job (``lmae degrade``, ``lmae complete``) keeps ``.lmae-run.json`` in its output
folder: the command, its inputs (resolved paths), the options that decide the outputs and
the model's sha256.  Options that change only speed (threads, batch size, lanes, workers)
are not part of it.  Before the first output is written, :func:`check_or_start` compares
the folder's record with the new run's:

* an empty folder (or one holding a record but no outputs yet): the run starts, the record
  is written;
* the same record: the run resumes (the caller makes only the missing outputs);
* another record, or outputs without a record (e.g. the ground truth by mistake): refused
  with :class:`RunRecordError` saying what differs, unless the caller overwrites (then every
  output is redone and the record rewritten).

Also here: the model fingerprint (:func:`model_sha256`) and the output-folder checks that
every batch job makes before its expensive work (:func:`ensure_writable_folder`,
:func:`remove_stray_temps`).
"""
from __future__ import annotations

import enum
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import MANIFEST, sha256_file
from .labels import atomic_write_bytes

RUN_RECORD = ".lmae-run.json"
RECORD_FORMAT = "lmae-run"
RECORD_VERSION = 1


class RunRecordError(ValueError):
    """An output folder holds outputs of another run (or outputs without a run record)."""


class OutputFolderError(ValueError):
    """An output folder that cannot be created or written."""


class Start(enum.Enum):
    """How a run proceeds in its output folder."""

    NEW = "new"  # nothing there yet: make every output
    RESUME = "resume"  # the same run's outputs: make only the missing ones
    OVERWRITE = "overwrite"  # asked to redo every output


def _plain(value: Any) -> Any:
    """The JSON form (tuples -> lists, paths -> str): what a record compares and stores."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class RunRecord:
    """What decides a batch job's outputs.  ``info`` (versions, time, what the backend
    resolved to) is kept for people and never compared."""

    command: str
    inputs: dict[str, str]
    options: dict[str, Any]
    model_path: str | None = None
    model_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs = _plain(self.inputs)
        self.options = _plain(self.options)
        self.info = _plain(self.info)

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        model = None if self.model_sha256 is None else {"path": self.model_path, "sha256": self.model_sha256}
        return {"format": RECORD_FORMAT, "format_version": RECORD_VERSION, "command": self.command,
                "inputs": self.inputs, "options": self.options, "model": model,
                "info": {"lmae_sdk": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.info}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "run record") -> "RunRecord":
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise RunRecordError(f"{where}: not an lmae run record")
        if data.get("format_version") != RECORD_VERSION:
            raise RunRecordError(f"{where}: run record version {data.get('format_version')!r} is not supported "
                                 f"(this lmae-sdk writes version {RECORD_VERSION})")
        try:
            model = data.get("model") or {}
            return cls(command=str(data["command"]), inputs=dict(data["inputs"]), options=dict(data["options"]),
                       model_path=model.get("path"), model_sha256=model.get("sha256"),
                       info=dict(data.get("info") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunRecordError(f"{where}: malformed run record ({type(e).__name__}: {e})") from None

    def differences(self, new: "RunRecord") -> list[str]:
        """What ``new`` changes, e.g. ``["options.ratio: 0.5 -> 0.3"]``; empty when it matches."""
        out = []
        if self.command != new.command:
            out.append(f"command: {self.command} -> {new.command}")
        for part in ("inputs", "options"):
            old, cur = getattr(self, part), getattr(new, part)
            for key in sorted(set(old) | set(cur)):
                if old.get(key, "(unset)") != cur.get(key, "(unset)"):
                    out.append(f"{part}.{key}: {old.get(key, '(unset)')} -> {cur.get(key, '(unset)')}")
        if self.model_sha256 != new.model_sha256:
            out.append(f"model: {_model_words(self)} -> {_model_words(new)}")
        return out

    def write(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / RUN_RECORD
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "RunRecord | None":
        """The folder's record, None where it has none; RunRecordError for an unreadable one."""
        path = Path(folder) / RUN_RECORD
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunRecordError(f"{path}: unreadable run record ({type(e).__name__}: {e})") from None
        return cls.from_dict(data, str(path))


def _model_words(r: RunRecord) -> str:
    if r.model_sha256 is None:
        return "none"
    return f"sha256 {r.model_sha256[:12]}" + (f" ({r.model_path})" if r.model_path else "")


def is_stray_temp(name: str) -> bool:
    """A temp file an interrupted atomic write left (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def folder_outputs(folder: str | os.PathLike, bookkeeping: tuple[str, ...] = ()) -> list[str]:
    """Names in ``folder`` a run could have made: all but its record, stray temp files and
    the job's ``bookkeeping`` files (e.g. report.json); sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name != RUN_RECORD and p.name not in bookkeeping and not is_stray_temp(p.name))


def decide(folder: str | os.PathLike, record: RunRecord, overwrite: bool = False,
           bookkeeping: tuple[str, ...] = ()) -> Start:
    """How ``record``'s run proceeds in ``folder``; writes nothing.  Raises RunRecordError
    when the folder holds outputs of another run, or outputs without a record, and
    ``overwrite`` is not set."""
    if overwrite:
        return Start.OVERWRITE
    outputs = folder_outputs(folder, bookkeeping)
    if not outputs:
        return Start.NEW
    old = RunRecord.read(folder)
    if old is None:
        shown = ", ".join(outputs[:3]) + (", ..." if len(outputs) > 3 else "")
        raise RunRecordError(f"{folder} already holds {len(outputs)} file(s) ({shown}) but no run record "
                             f"({RUN_RECORD}): they are not outputs of this run (another tool's, or input "
                             f"labels?); refusing to mix this run's outputs in")
    diffs = old.differences(record)
    if diffs:
        raise RunRecordError(f"{folder} holds {len(outputs)} output(s) of another run ({'; '.join(diffs)}); "
                             f"refusing to mix this run's outputs in")
    return Start.RESUME


def check_or_start(folder: str | os.PathLike, record: RunRecord, overwrite: bool = False,
                   bookkeeping: tuple[str, ...] = ()) -> Start:
    """:func:`decide`, then write ``record`` into ``folder`` unless the run resumes."""
    start = decide(folder, record, overwrite, bookkeeping)
    if start is not Start.RESUME:
        record.write(folder)
    return start


# ------------------------------------------------------------------------------ fingerprints
def model_sha256(path: str | os.PathLike) -> str:
    """The model's fingerprint.  A file (a ``.pt`` checkpoint): its sha256.  A bundle folder:
    sha256 over ``manifest.json`` and, for every file it lists (engines, boundary graph,
    checkpoint) without a recorded sha256, that file's sha256 (a listed sha256 is part of the
    manifest's bytes, and the runtime checks the file against it when loading); a ``.pt`` in
    the folder that the manifest does not list with a sha256 counts too (the torch backend
    may load it)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    manifest = p / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"{p}: not a model: neither a checkpoint file nor a bundle folder with {MANIFEST}")
    raw = manifest.read_bytes()
    h = hashlib.sha256(MANIFEST.encode() + b"\0" + raw)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = {}  # the loader names what is wrong with it; the bytes are still the fingerprint
    listed = _listed_files(data)
    unverified = {name for name, sha in listed.items() if not sha}
    unverified |= {f.name for f in p.glob("*.pt") if not listed.get(f.name)}
    for name in sorted(unverified):
        f = p / name
        h.update(f"\0{name}\0{sha256_file(f) if f.is_file() else 'missing'}".encode())
    return h.hexdigest()


def _listed_files(data: Any) -> dict[str, str | None]:
    """{file name: its recorded sha256 or None} for every file a bundle manifest lists."""
    refs: list[Any] = []
    if isinstance(data, dict):
        for e in data.get("engines") or []:
            if isinstance(e, dict):
                refs += [e.get("encoder"), e.get("decoder")]
        refs += [data.get("boundary_graph"), data.get("checkpoint")]
    out: dict[str, str | None] = {}
    for ref in refs:
        if isinstance(ref, str):
            out.setdefault(ref, None)
        elif isinstance(ref, dict) and isinstance(ref.get("file"), str):
            sha = ref.get("sha256")
            out[ref["file"]] = sha if isinstance(sha, str) and sha else out.get(ref["file"])
    return out


# ------------------------------------------------------------------------------ output folders
def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) and prove it writable with a probe file that is
    removed again; OutputFolderError naming the folder otherwise.  Batch jobs call this
    before loading a model or reading inputs, not after the work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lmae-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is a file, not a folder" if blocking is not None else (e.strerror or str(e))
        raise OutputFolderError(f"cannot write to {folder}: {reason}") from None
    return folder


def remove_stray_temps(folder: str | os.PathLike) -> int:
    """Remove the temp files an interrupted run left (finished outputs are only ever renamed
    into place, so a temp file is never a finished output); returns how many."""
    folder = Path(folder)
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if is_stray_temp(p.name) and p.is_file():
                p.unlink()
                n += 1
    return n
