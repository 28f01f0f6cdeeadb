"""The real datasets of ../shared/realdata (skipped where that folder is absent): every one reads,
passes `automl debug`, shows its pixel format, and has no mirrored class pair (objects that stand apart
in a scene are not a left and a right lung)."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl.data.dataset import SegmentationDataset
from automl.data.flips import mirrored_pairs
from automl.data.stats import label_stats
from automl.debug import run_debug

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
NAMES = ["facade", "fls_sonar", "tgs_salt", "vines"]
EXPECTED = {  # images, pixel format, input channels
    "facade": (108, (3, 8), 3), "fls_sonar": (300, (1, 8), 1), "tgs_salt": (217, (3, 8), 3), "vines": (8, (3, 8), 3),
}

pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not REALDATA.is_dir(), reason="no ../shared/realdata")]


def real_yaml(name: str, tmp_path: Path) -> Path:
    """shared/ is read-only: a copy of the dataset.yaml reads the data there and caches here."""
    source = REALDATA / name
    path = tmp_path / f"{name}.yaml"
    path.write_text((source / "dataset.yaml").read_text() + f"\nroot: {source}\ncache_dir: {tmp_path / 'cache'}\n")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_real_data_reads_and_has_no_mirrored_pair(name, tmp_path):
    dataset = SegmentationDataset.from_yaml(real_yaml(name, tmp_path))
    stats = label_stats(dataset)
    images, (channels, bits), input_channels = EXPECTED[name]
    assert len(dataset) == images and set(stats.channels) == {channels} and set(stats.bits) == {bits}
    assert stats.input_channels() == input_channels
    assert mirrored_pairs(stats, dataset.spec.class_names, dataset.spec.task) == []
    if name == "vines":  # Windows paths in the COCO file: matched by basename, said once
        assert [issue.kind for issue in dataset.listing.issues] == ["basename_match"]


@pytest.mark.parametrize("name", NAMES)
def test_debug_passes_on_real_data(name, tmp_path):
    checks = run_debug(real_yaml(name, tmp_path), echo=lambda line: None)
    assert all(check.ok for check in checks), [check.line() for check in checks if not check.ok]
