"""Files of the run directory: atomic writes so a killed process never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600; the result should read like any other file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def write_yaml(path: str | Path, data: Any) -> None:
    import yaml

    write_text(path, yaml.safe_dump(data, sort_keys=False))


class RunDir:
    """runs/<study>/: everything a later command needs, days later, in another process."""

    def __init__(self, runs_dir: str | Path, study: str):
        if Path(study).name != study or study in ("", ".", ".."):
            from automl.errors import UserError

            path = Path(study)
            raise UserError(f"'{study}' is a path; a study is named by its folder's name", key="STUDY",
                            fix=f"pass the name and where it lives: {path.name or 'NAME'} --runs-dir {path.parent}")
        self.root = Path(runs_dir).resolve() / study
        self.study = study

    @property
    def settings_file(self) -> Path:
        return self.root / "study.yaml"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def search_split(self) -> Path:
        return self.root / "search_split.json"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:04d}"

    def exists(self) -> bool:
        return self.settings_file.exists()

    def images_trained(self, promoted: bool = True) -> int:
        """Images that went through a training step (the compute), summed over every trial's metrics.csv
        and, with `promoted`, every promoted fold's and refit model's."""
        import csv

        files = [*self.root.glob("trials/*/metrics.csv")]
        files += [*self.root.glob("promoted/*/fold*/metrics.csv"), *self.root.glob("promoted/*/full/metrics.csv")
                  ] if promoted else []
        total = 0
        for path in files:
            with open(path, newline="") as f:
                total += sum(int(float(row.get("train_images") or 0)) for row in csv.DictReader(f))
        return total

    def settings(self):
        from automl.config import StudySettings, read_yaml
        from automl.errors import UserError

        if not self.exists():
            raise UserError(f"no study '{self.study}' in {self.root.parent}", key="STUDY",
                            fix="run `automl search --study NAME ...` first, or pass --runs-dir")
        return StudySettings(**read_yaml(self.settings_file, "study settings"))


class NpyRows:
    """Rows of a large .npy file read on demand with plain file reads.

    Unlike a memmap, the pages read do not stay mapped into the process, so resident memory stays at the
    size of one chunk however many rows are streamed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_size = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("NpyRows reads contiguous rows only")
        count = max(0, stop - start) * self.row_size
        data = np.fromfile(self.path, dtype=self.dtype, count=count,
                           offset=self.offset + start * self.row_size * self.dtype.itemsize)
        return data.reshape(-1, *self.shape[1:])
