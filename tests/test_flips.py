"""Laterality-safe flips: the audit finds mirrored class pairs (and no pair where objects merely stand
apart), flips then swap the pair in augmentation and TTA, or are switched off, and a search saves the
decision in the study."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
import yaml

from automl.config import TrialConfig
from automl.data.audit import audit_dataset
from automl.data.dataset import SegmentationDataset
from automl.data.flips import mirrored_pairs
from automl.data.stats import label_stats
from automl.search import SearchOptions, prepare
from tests.conftest import write_image, write_mirrored_dataset, write_yaml
from trainables.augment import AUGMENTATIONS, PairedHorizontalFlip, apply, build_augmentation, with_flip_policy
from trainables.data import TrainData
from trainables.infer import activate, tta_probabilities
from trainables.models import create_model
from trainables.train import train

LUNGS = ["left_lung", "right_lung"]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    return write_mirrored_dataset(tmp_path_factory.mktemp("mirrored"), n=20, size=64)


def test_audit_flags_the_mirrored_pair_and_not_the_heart(mirrored, capsys):
    table = audit_dataset(mirrored)
    pairs = table[table["reason"] == "mirrored_pair"]
    assert len(pairs) == 1 and "'left_lung' and 'right_lung' look mirrored" in pairs["detail"].iloc[0]
    assert "together in 100%" in pairs["detail"].iloc[0] and "on opposite halves in 100%" in pairs["detail"].iloc[0]
    out = capsys.readouterr().out
    assert "will swap them" in out and "flips: {horizontal: false}" in out  # says how to override
    dataset = SegmentationDataset.from_yaml(mirrored)
    found = mirrored_pairs(label_stats(dataset), dataset.spec.class_names, "multiclass")
    assert [(p.left, p.right) for p in found] == [("left_lung", "right_lung")]


def write_scene(folder, rng, n=20, together=1.0, size_ratio=1.0, right_column=41, names=("bottle", "tire")):
    """Two object classes, one on each half (the first centred at 0.2 of the width, the second at
    `right_column`): co-occurring in a share `together` of the images, the second `size_ratio` times the
    area of the first."""
    for i in range(n):
        mask = np.zeros((64, 64), np.uint8)
        has_both = i < together * n
        if has_both or i % 2 == 0:
            mask[20:30, 8:18] = 1
        if has_both or i % 2 == 1:
            side = int(round(10 * np.sqrt(size_ratio)))
            mask[20:20 + side, right_column:right_column + side] = 2
        write_image(folder / "images" / f"s{i:02d}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        write_image(folder / "masks" / f"s{i:02d}.png", mask)
    dataset_yaml = write_yaml(folder, name="scene", task="multiclass", classes=["background", *names],
                              images="images/*.png", labels={"format": "mask_png", "path": "masks"})
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    return mirrored_pairs(label_stats(dataset), dataset.spec.class_names, "multiclass")


def test_objects_that_merely_stand_apart_are_not_pairs(tmp_path, rng):
    assert write_scene(tmp_path / "rarely_together", rng, together=0.5) == []  # co-occurrence decides
    assert write_scene(tmp_path / "unequal", rng, size_ratio=4.0) == []  # similar area decides
    assert write_scene(tmp_path / "not_mirrored", rng, right_column=30) == []  # centres 0.20 and 0.55
    hands = write_scene(tmp_path / "hands", rng, names=("left_hand", "right_hand"))  # centres 0.20 and 0.72
    assert [(p.left, p.right) for p in hands] == [("left_hand", "right_hand")]


def test_a_paired_flip_swaps_mask_values_and_channels():
    flip = A.Compose([PairedHorizontalFlip([(1, 2)], p=1.0)], seed=0)
    image = np.zeros((2, 4, 3), np.uint8)
    labels = np.array([[1, 0, 3, 2], [1, 1, 0, 0]], np.uint8)
    np.testing.assert_array_equal(apply(flip, image, labels)[1], [[1, 3, 0, 2], [0, 0, 2, 2]])
    channels = np.zeros((3, 2, 4), bool)
    channels[1, :, 0] = True  # class 1 on the left edge
    flipped = apply(flip, image, channels)[1]
    assert flipped[2, :, 3].all() and flipped.sum() == 2  # now class 2, on the right edge


def test_horizontal_false_removes_every_flip_from_every_set():
    for name in AUGMENTATIONS.names():
        kept = with_flip_policy(AUGMENTATIONS.get(name)(), horizontal=False)
        assert not any(isinstance(t, A.HorizontalFlip) for t in kept), name
    ramp = np.tile(np.arange(16, dtype=np.uint8), (16, 1))[..., None]
    pipeline = build_augmentation("flip", seed=0, horizontal=False)
    assert all(np.array_equal(apply(pipeline, ramp, ramp[..., 0])[0], ramp) for _ in range(20))
    plain = build_augmentation("flip", seed=0)
    assert any(not np.array_equal(apply(plain, ramp, ramp[..., 0])[0], ramp) for _ in range(20))


def test_tta_with_pairs_equals_the_swap_done_by_hand():
    torch.manual_seed(0)
    model = create_model("unet", "tu-test_resnet", 4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = activate(model(x), "multiclass")
        flipped_back = activate(model(x.flip(-1)), "multiclass").flip(-1)
    by_hand = (plain + flipped_back[:, [0, 2, 1, 3]]) / 2
    torch.testing.assert_close(tta_probabilities(model, x, "multiclass", "flip", swaps=[(1, 2)]), by_hand)
    torch.testing.assert_close(tta_probabilities(model, x, "multiclass", "flip", horizontal=False), plain)
    torch.testing.assert_close(tta_probabilities(model, x, "multiclass", "flip"), (plain + flipped_back) / 2)


def lung_scores(dataset, pairs) -> list[float]:
    n = len(dataset)
    config = TrialConfig(model={"arch": "unet", "encoder": "tu-test_resnet", "in_channels": 1},
                         data={"resize": 64, "augment": "flip", "batch_size": 8, "flips": {"pairs": pairs}},
                         optim={"lr": 3e-3}, train={"epochs": 5, "min_steps_per_epoch": 8})
    per_class = train(config, TrainData(dataset, list(range(n - 8)), list(range(n - 8, n)))).history[-1]["per_class"]
    return per_class[1:3]


def test_flip_augmentation_confuses_mirrored_classes_unless_they_are_swapped(mirrored):
    dataset = SegmentationDataset.from_yaml(mirrored)
    plain = lung_scores(dataset, [])
    paired = lung_scores(dataset, [LUNGS])
    assert min(paired) > 0.75, paired
    assert np.mean(plain) < np.mean(paired) - 0.3, (plain, paired)  # a flipped left lung taught as "left"


def test_the_search_saves_and_pins_the_flip_decision(mirrored, tmp_path):
    lines = []
    options = SearchOptions(data=mirrored, study="m", runs_dir=tmp_path / "runs", trials=1, wandb="off",
                            fixed={"model.encoder": "tu-test_resnet", "data.resize": 64})
    run, space, settings, _ = prepare(options, echo=lines.append)
    assert any("'left_lung' and 'right_lung' look mirrored" in line and "To override" in line for line in lines)
    assert space.fixed["data.flips"] == {"horizontal": True, "pairs": [LUNGS]}
    assert space.fixed["model.in_channels"] == 1  # gray PNGs
    saved = yaml.safe_load(run.settings_file.read_text())
    assert saved["decisions"]["flips"]["source"] == "audit" and saved["decisions"]["flips"]["pairs"] == [LUNGS]
    assert saved["space"]["fixed"]["data.flips"]["pairs"] == [LUNGS]


def test_the_dataset_yaml_overrides_the_audit(mirrored, tmp_path):
    spec = yaml.safe_load(mirrored.read_text())
    root = mirrored.parent
    for flips, expected in (({"horizontal": False}, {"horizontal": False, "pairs": []}),
                            ({"pairs": []}, {"horizontal": True, "pairs": []})):
        dataset_yaml = write_yaml(tmp_path, "override.yaml", **spec, root=str(root), flips=flips)
        options = SearchOptions(data=dataset_yaml, study=f"o{len(flips)}{flips.get('horizontal')}",
                                runs_dir=tmp_path / "runs", trials=1, wandb="off",
                                fixed={"model.encoder": "tu-test_resnet", "data.resize": 64})
        run, space, _, _ = prepare(options, echo=lambda line: None)
        assert space.fixed["data.flips"] == expected
        assert yaml.safe_load(run.settings_file.read_text())["decisions"]["flips"]["source"] == "dataset.yaml"


@pytest.mark.parametrize("flips, message", [
    ({"pairs": [["left_lung", "rigth_lung"]]}, "did you mean 'right_lung'"),
    ({"horizontal": False, "pairs": [LUNGS]}, "keep one of the two"),
    ({"pairs": [["left_lung", "right_lung"], ["left_lung", "heart"]]}, "one mirrored pair only"),
])
def test_bad_flips_are_one_line_and_exit_2(mirrored, tmp_path, run_cli, flips, message):
    spec = yaml.safe_load(mirrored.read_text())
    dataset_yaml = write_yaml(tmp_path, "bad.yaml", **spec, root=str(mirrored.parent), flips=flips)
    code, _, err = run_cli("data", "inspect", dataset_yaml)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
