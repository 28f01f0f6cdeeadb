"""A labelled dataset read through its registered reader: records in, decoded samples out."""

from __future__ import annotations

from pathlib import Path

from automl.config import DatasetSpec, load_dataset_spec
from automl.data import formats
from automl.data.formats import Issue, Listing, Record, Sample
from automl.errors import UserError


class SegmentationDataset:
    """The labelled images of a dataset.yaml. `load(i)` decodes one sample at its original size.

    strict=True (training, inspect) raises a UserError on a fatal label issue; strict=False (audit) returns
    the issues with the sample so they can be listed.
    """

    def __init__(self, spec: DatasetSpec, strict: bool = True):
        self.spec = spec
        self.strict = strict
        self.reader = formats.create_reader(spec)
        self.listing: Listing = self.reader.listing()
        self.excluded: list[str] = []
        self.records: list[Record] = self._without_excluded(self.listing.records)
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
    def from_yaml(cls, path: str | Path, strict: bool = True) -> "SegmentationDataset":
        return cls(load_dataset_spec(path), strict=strict)

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

    def load(self, index: int) -> Sample:
        return self.load_with_issues(index)[0]

    def load_with_issues(self, index: int) -> tuple[Sample, list[Issue]]:
        record = self.records[index]
        image = formats.read_image(record.image)
        height, width = image.shape[:2]
        mask, issues = self.reader.read_mask(record, height, width)
        if self.strict:
            self._raise_fatal(issues, (self.label_files(index) or [record.image])[0])
        return Sample(record.id, record.group, image, mask, (height, width)), issues

    def read_mask(self, index: int, height: int, width: int) -> tuple:
        """The mask alone (no image decode), for statistics over a dataset."""
        mask, issues = self.reader.read_mask(self.records[index], height, width)
        if self.strict:
            self._raise_fatal(issues, (self.label_files(index) or [self.records[index].image])[0])
        return mask, issues

    def source_files(self, index: int) -> list[Path]:
        """Every file the sample is made of: the image and its label files."""
        return [self.records[index].image, *self.label_files(index)]

    def label_files(self, index: int) -> list[Path]:
        return self.reader.label_files(self.records[index])

    def _raise_fatal(self, issues: list[Issue], file: str | Path) -> None:
        fatal = [issue for issue in issues if issue.fatal]
        if fatal:
            fix = {"unknown_class": "add the name to classes in the dataset.yaml, or fix the label",
                   "size_mismatch": "make the label match the image size"}.get(fatal[0].kind)
            more = f" (+{len(fatal) - 1} more)" if len(fatal) > 1 else ""
            raise UserError(f"{fatal[0].detail}{more}", file=file,
                            fix=(fix or "fix the label") + "; `automl data audit` lists every such problem")
