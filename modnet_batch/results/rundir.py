"""The run directory: its layout, per-unit completion markers and the job's identity for resume.

Layout: job.yaml, alpha/<image_id>.npz, outputs/ (image files, results.outputs), metrics.parquet,
summary.json, state/identity.json (results.identity), state/lock (while a job writes the run),
state/units/<unit>.json (one per finished work unit; its presence means the unit is done; runs
made before work units were named so keep theirs in state/shards/).

The root is a local path or a URI (modnet_batch.storage): every file is read and written
through it, complete or absent, the markers last. It is a storage.WorkFolder: the same job
resumes it, another is refused, and one job at a time writes it (the process that planned the
job holds state/lock from `prepare` to `release`; a Ray job's workers never take it).
"""

from __future__ import annotations

import fnmatch
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import yaml

from modnet_batch.data.ids import is_safe_name
from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import ImageRow
from modnet_batch.results.alpha import read_alpha, write_alpha
from modnet_batch.results.identity import RunIdentity
from modnet_batch.results.outputs import OutputKind, OutputSpec
from modnet_batch.results.records import ReturnedFile, UnitResult
from modnet_batch.results.summary import Summary
from modnet_batch.results.table import read_rows, write_rows
from modnet_batch.storage import (
    LOCK_FILE,
    TEMP_SUFFIX,
    AnyPath,
    FolderLock,
    UriPath,
    WorkFolder,
    atomic_write_bytes,
    atomic_write_json,
    is_inside,
    location,
    relative,
)


def _checked(name: str, what: str) -> str:
    """`name`, if it is safe as a file name here: ids read from a shard are never trusted."""
    if not is_safe_name(name):
        raise ModnetBatchError(
            f"{what} {name!r} is not safe as a file name (letters, digits, . _ - only, no "
            "leading dot); nothing is written for it: fix the dataset, re-ingest its source"
        )
    return name


# Where `matte OUT` keeps its run directory, inside OUT.
MATTE_RUN = Path(".modnet-batch") / "run"


class RunDir:
    """Paths and state of one run directory; every read and write of a run goes through it."""

    @classmethod
    def find(cls, path: str | AnyPath) -> RunDir:
        """The run at `path`: a run directory, or a `matte` OUT folder (its run lives in
        OUT/.modnet-batch/run), with its outputs folder as the job recorded it."""
        path = location(path)
        root = path
        matte = path / str(MATTE_RUN)
        if not (path / "summary.json").is_file() and (matte / "summary.json").is_file():
            root = path / str(MATTE_RUN)
        job = cls(root).read_job()
        return cls(root, job.get("output_dir"))

    def __init__(self, root: str | AnyPath, outputs: str | AnyPath | None = None) -> None:
        self.root: AnyPath = location(root)
        # per-image image files (results.outputs): in the run, or where `matte` was asked to
        self.outputs: AnyPath = location(outputs) if outputs is not None else self.root / "outputs"
        self.alpha = self.root / "alpha"
        self.state = self.root / "state"
        self.job_yaml = self.root / "job.yaml"
        self.metrics = self.root / "metrics.parquet"
        self.summary = self.root / "summary.json"
        self.identity_file = self.state / "identity.json"
        self.lock_file = self.state / LOCK_FILE
        self._work = WorkFolder(
            self.identity_file, FolderLock(self.lock_file, job="job", target=self.root)
        )

    @cached_property
    def unit_state(self) -> AnyPath:
        """Where the completion markers are: state/units/, or state/shards/ in a run that
        began before work units were named so (it resumes and reports where it is)."""
        legacy = self.state / "shards"
        return legacy if legacy.is_dir() else self.state / "units"

    # --- layout -------------------------------------------------------------------------------
    def alpha_path(self, image_id: str) -> AnyPath:
        return self.alpha / f"{_checked(image_id, 'image id')}.npz"

    def output_path(
        self, spec: OutputSpec, kind: OutputKind, image_id: str, name: str | None = None
    ) -> AnyPath:
        """outputs/<id><ext> when the job writes one kind of file, outputs/<kind>/<id><ext>
        when it writes several. `name` (a file-list dataset: the source's relative path without
        extension) replaces the id and must stay inside the outputs folder."""
        if name is None:
            rel = _checked(image_id, "image id")
        else:
            parts = Path(name).parts
            if not parts or Path(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
                raise ModnetBatchError(f"output name {name!r} leaves the output folder")
            rel = name
        base = self.outputs if len(spec.files) == 1 else self.outputs / kind.value
        return base / (rel + spec.extension(kind))

    def write_output(self, path: AnyPath, data: bytes) -> None:
        atomic_write_bytes(path, data)

    # --- files a worker sends back (--results-via driver) --------------------------------------
    def returned(self, path: AnyPath, data: bytes) -> ReturnedFile:
        """`path` (an alpha or output path of this run) as a file for the driver to write."""
        for base, top in (("outputs", self.outputs), ("run", self.root)):
            if is_inside(path, top):
                return ReturnedFile(base, relative(path, top), data)
        raise ModnetBatchError(f"{path} is outside run {self.root} and its outputs folder")

    def write_returned(self, files: list[ReturnedFile]) -> None:
        """Write the files a worker sent back, each atomically, where it would have written them
        (their paths were checked there; checked again: nothing may leave the run's folders)."""
        for f in files:
            top = {"run": self.root, "outputs": self.outputs}.get(f.base)
            parts = Path(f.rel).parts
            if top is None or not parts or Path(f.rel).is_absolute() or ".." in parts:
                raise ModnetBatchError(f"a worker sent back {f.base}:{f.rel!r}, not a run file")
            atomic_write_bytes(top / f.rel, f.data)

    def probe(self, token: str) -> AnyPath:
        """A file the driver writes so that each worker can tell whether it sees this run
        directory (the same path may exist, empty or another's, on a node that does not)."""
        return self.state / f"probe-{_checked(token, 'probe token')}"

    def marker(self, unit: str) -> AnyPath:
        return self.unit_state / f"{_checked(unit, 'work unit name')}.json"

    # --- identity and resume ------------------------------------------------------------------
    def prepare(self, identity: dict[str, Any]) -> bool:
        """Create the run dir, or accept it for resume when it was made by the same job; from
        then on this process holds it (`release` when the job ends).

        Returns True when resuming. A directory made by another job (other dataset, model or
        protocol), or one that is not a run directory, is refused: nothing is overwritten. A
        run directory that a live job writes is refused, naming it (host and pid).
        """
        if isinstance(self.root, UriPath):
            self.root.check_store()
        if self.root.exists() and not self.root.is_dir():
            raise ModnetBatchError(
                f"--out {self.root} is a file, not a directory; pass a new directory for the run"
            )
        started = self.identity_file.exists() or self.lock_file.exists()
        if not started and self.root.exists() and any(self.root.iterdir()):
            raise ModnetBatchError(
                f"run directory {self.root} exists and is not a modnet-batch run; "
                "choose a new --out"
            )
        self.state.mkdir(parents=True, exist_ok=True)
        resumed = self._work.claim(identity, self._refusal)
        try:
            if resumed:
                self._remove_stale_temps()
            else:
                self.unit_state.mkdir(parents=True, exist_ok=True)
                self.alpha.mkdir(parents=True, exist_ok=True)
                self._work.record_identity(identity)
        except BaseException:
            self.release()
            raise
        return resumed

    def release(self) -> None:
        """Let another job write this run (when the job that prepared it ends)."""
        self._work.release()

    def _refusal(self, differ: list[str], recorded: dict[str, Any]) -> str:
        return (
            f"run directory {self.root} holds a different job (differs in "
            f"{', '.join(sorted(differ))}); choose a new --out, or delete it to start over"
        )

    def _remove_stale_temps(self) -> None:
        """Half-written files of an attempt that was killed (never a finished file: those are
        renamed into place complete)."""
        for folder in (self.root, self.alpha, self.state, self.unit_state):
            for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
        if self.outputs.is_dir():  # the run owns its outputs folder (checked at the first run)
            for tmp in self.outputs.rglob(f".*{TEMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)

    def read_job(self) -> dict[str, Any]:
        """job.yaml as written ({} when absent or unreadable: the summary still says the most)."""
        try:
            data = yaml.safe_load(self.job_yaml.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    def recorded_identity(self) -> dict[str, Any] | None:
        """state/identity.json as the job's first attempt wrote it (None: a fresh run)."""
        if not self.identity_file.exists():
            return None
        data = json.loads(self.identity_file.read_text())
        if not isinstance(data, dict):
            raise ModnetBatchError(
                f"{self.identity_file} is not a run identity; choose a new --out"
            )
        return data

    def output_spec(self) -> OutputSpec:
        """What the job wrote per image, as its identity recorded it (npz alone when it says
        nothing: the default of every scored run)."""
        try:
            recorded = self.recorded_identity()
            return OutputSpec() if recorded is None else RunIdentity.from_dict(recorded).outputs
        except (OSError, ValueError, ModnetBatchError):
            return OutputSpec()

    def write_job(self, text: str) -> None:
        """job.yaml, once: a resumed run keeps the configuration it started with."""
        if not self.job_yaml.exists():
            atomic_write_bytes(self.job_yaml, text.encode())

    # --- unit results -------------------------------------------------------------------------
    def done_units(self) -> set[str]:
        if not self.unit_state.exists():
            return set()
        return {p.stem for p in self.unit_state.glob("*.json")}

    def write_result(self, result: UnitResult) -> None:
        """The unit's completion marker; written last, so a present marker means done."""
        atomic_write_json(self.marker(result.unit), result.to_dict())

    def load_results(self) -> list[UnitResult]:
        return [UnitResult.from_dict(json.loads(p.read_text())) for p in self._markers()]

    def _markers(self) -> list[AnyPath]:
        """The completion markers, by name."""
        found: list[AnyPath] = list(self.unit_state.glob("*.json"))
        return sorted(found, key=lambda p: p.name)

    def results_with_failures(self) -> list[UnitResult]:
        """The finished units with at least one failed image (what a resume may retry): every
        marker is read, only those are decoded into rows (on a finished 100k-image run, 0.5 s
        instead of 1.1 s for all of them)."""
        found = []
        for p in self._markers():
            data = json.loads(p.read_text())
            if data.get("failed", 1):  # a marker without the count: look at its rows
                found.append(UnitResult.from_dict(data))
        return found

    def last_result_time(self) -> float | None:
        """When the last unit result was recorded (its marker's mtime, epoch seconds)."""
        marks = _mtimes(self.unit_state, "*.json")
        return max(marks) if marks else None

    # --- per-image outputs --------------------------------------------------------------------
    def write_alpha(self, image_id: str, alpha: npt.NDArray[np.uint8]) -> None:
        write_alpha(self.alpha_path(image_id), alpha)

    def read_alpha(self, image_id: str) -> npt.NDArray[np.uint8]:
        return read_alpha(self.alpha_path(image_id))

    def read_prediction(
        self, image_id: str, name: str | None = None, spec: OutputSpec | None = None
    ) -> npt.NDArray[np.uint8] | None:
        """The job's alpha of one image, uint8 HxW: alpha/<id>.npz (the scoring size) when
        written, else the first image output that holds it (alpha-png, alpha-png16, cutout, at
        the size the job wrote them); None when the job kept no alpha of it. `name` is a
        file-list record's output name."""
        if self.alpha_path(image_id).is_file():
            return self.read_alpha(image_id)
        spec = spec or self.output_spec()
        for kind in (OutputKind.ALPHA_PNG, OutputKind.ALPHA_PNG16, OutputKind.CUTOUT):
            if kind not in spec.kinds:
                continue
            path = self.output_path(spec, kind, image_id, name)
            pixels = _read_image(path) if path.is_file() else None
            if pixels is None:
                continue
            if pixels.ndim == 3:  # a cutout: BGRA, the matte is its alpha
                pixels = pixels[..., 3]
            alpha: npt.NDArray[np.uint8] = (
                np.rint(pixels / 257.0).astype(np.uint8)
                if pixels.dtype == np.uint16
                else np.asarray(pixels, dtype=np.uint8)
            )
            return alpha
        return None

    def alpha_times(self) -> list[float]:
        """Epoch times at which each alpha file was written (its mtime), sorted: one per image."""
        return sorted(_mtimes(self.alpha, "*.npz"))

    # --- the run's results --------------------------------------------------------------------
    def write_rows(self, rows: list[ImageRow]) -> None:
        write_rows(self.metrics, rows)

    def read_rows(self) -> list[ImageRow]:
        if not self.metrics.exists():
            raise ModnetBatchError(
                f"{self.root} has no metrics.parquet; is it a finished run directory?"
            )
        return read_rows(self.metrics)

    def write_summary(self, summary: Summary) -> None:
        atomic_write_json(self.summary, summary.to_dict())

    def read_summary(self) -> Summary:
        return Summary.read(self.summary)


def _mtimes(folder: AnyPath, pattern: str) -> list[float]:
    """The mtimes of the files in `folder` matching `pattern` (object storage: one listing)."""
    if isinstance(folder, UriPath):
        return [
            st.st_mtime
            for p, st in folder.walk_files()
            if p.parent == folder and fnmatch.fnmatchcase(p.name, pattern)
        ]
    return [os.stat(p).st_mtime for p in folder.glob(pattern)]


def _read_image(path: AnyPath) -> Any:
    if isinstance(path, UriPath):
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
