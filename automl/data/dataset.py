"""A labelled dataset read through its registered reader: records in, decoded samples out."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from automl.config import DatasetSpec, load_dataset_spec
from automl.data import formats
from automl.data.formats import Issue, Listing, Record, Sample
from automl.errors import UserError


class SegmentationDataset:
    """The labelled images of a dataset.yaml. `load(i)` decodes one sample at its original size.

    strict=True (training, inspect) raises a UserError on a fatal label issue; strict=False (audit) returns
    the issues with the sample so they can be listed.
    """

    def __init__(self, spec: DatasetSpec, strict: bool = True, pseudo: bool = True):
        self.spec = spec
        self.strict = strict
        self.reader = formats.create_reader(spec)
        self.listing: Listing = self.reader.listing()
        self.excluded: list[str] = []
        self.records: list[Record] = self._without_excluded(self.listing.records)
        if pseudo and spec.pseudo:  # inspect and audit look at the labelled images only
            clash = next((r.id for r in self.records if r.id.startswith(PSEUDO_PREFIX)), None)
            if clash:
                raise UserError(f"labelled image '{clash}' has an id pseudo-labelled images use", file=spec.source,
                                key="pseudo", fix="move the labelled images out of a folder named pseudo/")
            self.records += pseudo_records(spec)
        if strict:
            self._raise_fatal(self.listing.issues, spec.source)
        if not self.records:
            raise UserError(f"none of the {len(self.listing.unlabeled_images)} images matched by `images` has a "
                            f"label in {spec.labels.path}", file=spec.source, key="labels.path",
                            fix="check that label files are named like the images")

    def _without_excluded(self, records: list[Record]) -> list[Record]:
        """`exclude:` names image ids (one per line, as `automl data audit` lists them) left out of training."""
        if not self.spec.exclude:
            return records
        path = self.spec.resolve(self.spec.exclude)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the exclusion list {path}: {e}", file=self.spec.source, key="exclude",
                            fix="point it at a text file of image ids, one per line") from None
        excluded = {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}
        kept = [record for record in records if record.id not in excluded]
        self.excluded = sorted(excluded & {record.id for record in records})
        unknown = len(excluded) - len(self.excluded)
        if unknown:
            self.listing.issues.append(Issue("exclude_unmatched", f"{unknown} ids in {path.name} match no labelled "
                                                                  f"image (ids are paths relative to the root)",
                                             fatal=False))
        return kept

    @classmethod
    def from_yaml(cls, path: str | Path, strict: bool = True, pseudo: bool = True) -> "SegmentationDataset":
        return cls(load_dataset_spec(path), strict=strict, pseudo=pseudo)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def index_of(self) -> dict[str, int]:
        """Image id -> its index in `records`."""
        return {record.id: i for i, record in enumerate(self.records)}

    @property
    def groups(self) -> list[str]:
        return [r.group for r in self.records]

    @property
    def training_only(self) -> np.ndarray:
        """Boolean per record: pseudo-labelled, so never in a validation split, OOF or score."""
        return np.array([r.training_only for r in self.records], bool)

    @property
    def labelled_ids(self) -> list[str]:
        return [r.id for r in self.records if not r.training_only]

    def load(self, index: int) -> Sample:
        return self.load_with_issues(index)[0]

    def load_with_issues(self, index: int) -> tuple[Sample, list[Issue]]:
        record = self.records[index]
        image = formats.read_image(record.image)
        height, width = image.shape[:2]
        mask, issues = self._read_mask(record, height, width)
        if self.strict:
            self._raise_fatal(issues, (self.label_files(index) or [record.image])[0])
        return Sample(record.id, record.group, image, mask, (height, width)), issues

    def read_mask(self, index: int, height: int, width: int) -> tuple:
        """The mask alone (no image decode), for statistics over a dataset."""
        mask, issues = self._read_mask(self.records[index], height, width)
        if self.strict:
            self._raise_fatal(issues, (self.label_files(index) or [self.records[index].image])[0])
        return mask, issues

    def source_files(self, index: int) -> list[Path]:
        """Every file the sample is made of: the image and its label files."""
        return [self.records[index].image, *self.label_files(index)]

    def label_files(self, index: int) -> list[Path]:
        record = self.records[index]
        return [record.label] if record.training_only else self.reader.label_files(record)

    def _read_mask(self, record: Record, height: int, width: int) -> tuple:
        return read_pseudo_mask(self.spec, record, height, width) if record.training_only else \
            self.reader.read_mask(record, height, width)

    def _raise_fatal(self, issues: list[Issue], file: str | Path) -> None:
        fatal = [issue for issue in issues if issue.fatal]
        if fatal:
            fix = {"unknown_class": "add the name to classes in the dataset.yaml, or fix the label",
                   "size_mismatch": "make the label match the image size"}.get(fatal[0].kind)
            more = f" (+{len(fatal) - 1} more)" if len(fatal) > 1 else ""
            raise UserError(f"{fatal[0].detail}{more}", file=file,
                            fix=(fix or "fix the label") + "; `automl data audit` lists every such problem")


PSEUDO_PREFIX = "pseudo/"


def pseudo_records(spec: DatasetSpec) -> list[Record]:
    """The pseudo-labelled images of `spec.pseudo` that have a mask, as training-only records."""
    if spec.pseudo is None:
        return []
    pattern = spec.resolve(spec.pseudo.images)
    masks = spec.resolve(spec.pseudo.masks)
    records = []
    for path in sorted(Path(p) for p in glob.glob(str(pattern), recursive=True)):
        mask = masks / f"{path.stem}.npy"
        if path.is_file() and mask.is_file():
            image_id = f"{PSEUDO_PREFIX}{path.name}"
            records.append(Record(image_id, path, image_id, mask, training_only=True))
    if not records:
        raise UserError(f"no pseudo-labelled image: nothing matches {pattern} with a mask in {masks}",
                        file=spec.source, key="pseudo", fix="run `automl pseudo` again, or remove the key")
    return records


def read_pseudo_mask(spec: DatasetSpec, record: Record, height: int, width: int) -> tuple:
    """A mask `automl pseudo` wrote: HxW (multiclass, binary) or CxHxW (multilabel) uint8, with
    `pseudo.ignore` on the pixels the ensemble was not sure of."""
    try:
        mask = np.load(record.label, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read this pseudo-label: {e}", file=record.label,
                        fix="run `automl pseudo` again") from None
    expected = (spec.num_outputs, height, width) if spec.task == "multilabel" else (height, width)
    if mask.shape != expected or mask.dtype != np.uint8:
        return (np.zeros(expected, np.uint8),
                [Issue("size_mismatch", f"pseudo-label {mask.dtype} {mask.shape} vs expected uint8 {expected}")])
    return mask, []
