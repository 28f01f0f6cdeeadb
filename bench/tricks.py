"""Each trick of the loop against the same model without it, on a real dataset, at equal compute.

    .venv/bin/python bench/tricks.py [--dataset tgs_salt] [--resize 64] [--epochs 40] [--seeds 3]
                                     [--tricks ema,swa,cutmix,copypaste,drop_area_z,pseudo]

What it measures: one model per (trick, seed), Unet/resnet18 with the tool's default config (AdamW 1e-3,
cosine, 0.3 CE + 0.7 Dice, `light` augmentation), trained by `trainables.train` (the code path every
trial, fold and refit runs) on the training split, for the same number of optimizer steps with and without
the trick (every run's epoch is the same number of steps: one pass over the whole training split); its
final checkpoint scored on the held-out test images at their original size with `predict --evaluate`'s
metric. The split is real_data.py's: a seeded 20 % group test split that no run trains on. The tricks:
`ema` (train.ema 0.999), `swa` (train.swa.start 0.75), `cutmix` and `copypaste` (data.augment),
`drop_area_z` (the training images `automl data audit --drop 'area_z>1.2'` selects are left out; the
steps stay the same), `pseudo` (the test images join training as `automl pseudo` makes them: labelled by
the baseline model of the same seed, pixels under 0.9 confidence ignored, images under 50 % sure left out;
their labels are never read; fewer epochs, so the steps stay the same). Not the whole loop (search, folds, ensemble): a trick's effect on one model is what
a search over it would pick up. Printed: each trick's mean +- sd over the seeds, and its difference from
the baseline, whatever its sign.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data import REALDATA, test_split, write_yaml  # noqa: E402

from automl.config import load_dataset_spec, parse_trial_config  # noqa: E402
from automl.data.audit import DropRule, dropped_by_area  # noqa: E402
from automl.data.cache import ResizeCache  # noqa: E402
from automl.data.dataset import SegmentationDataset  # noqa: E402
from automl.data.formats import match_channels, read_image  # noqa: E402
from automl.data.stats import label_stats  # noqa: E402
from automl.plan import plan_data  # noqa: E402
from automl.postprocess import final_mask, to_original_size  # noqa: E402
from automl.space import unflatten  # noqa: E402
from automl.predict import Evaluation  # noqa: E402
from trainables.data import TrainData  # noqa: E402
from trainables.infer import predict_probabilities  # noqa: E402
from trainables.train import pick_device, train  # noqa: E402

TRICKS = {
    "baseline": {},
    "ema": {"train.ema": 0.999},
    "swa": {"train.swa.start": 0.75},
    "cutmix": {"data.augment": "cutmix"},
    "copypaste": {"data.augment": "copypaste"},
    "drop_area_z": {},  # fewer training images, chosen by the audit rule below
    "pseudo": {},  # + the test images, labelled by this seed's baseline model (see pseudo_labelled)
}
DROP_RULE = "area_z>1.2"
PSEUDO_CONFIDENCE = 0.9  # automl pseudo's defaults
PSEUDO_SURE_FRACTION = 0.5


def config_for(overrides: dict, base: dict, seed: int):
    """base and overrides as dotted keys, e.g. {"train.ema": 0.999}."""
    return parse_trial_config(unflatten({**base, **overrides, "train.seed": seed}), "bench/tricks.py")


def score_on_test(result, config, dataset: SegmentationDataset, test_ids: list[str], full_yaml: Path) -> float:
    from trainables.train import build_model, load_checkpoint

    device = pick_device()
    network = load_checkpoint(build_model(config, dataset.spec.num_outputs), result.checkpoint).to(device)
    cache, position = ResizeCache(dataset, config.data.resize), dataset.index_of
    evaluation = Evaluation(full_yaml)
    for image_id in test_ids:
        record = dataset.records[position[image_id]]
        image = match_channels(np.asarray(cache[position[image_id]].image), config.model.in_channels)
        probabilities = torch.from_numpy(predict_probabilities(network, image[None], dataset.spec.task, device)[0])
        full = to_original_size(probabilities, read_image(record.image).shape[:2])
        evaluation.add(record.image, final_mask(full.numpy(), dataset.spec.task))
    return float(evaluation.meter.compute())


def pseudo_labelled(result, config, dataset: SegmentationDataset, test_ids: list[str], out: Path
                    ) -> SegmentationDataset | None:
    """The dataset plus the test images as training-only images, labelled the way `automl pseudo` does
    (automl.pseudo.confident_mask) by the baseline model of the same seed: only their images are used,
    never their labels (transductive, as competitions pseudo-label their test set)."""
    from automl.config import PseudoSpec
    from automl.pseudo import confident_mask, sure_fraction
    from automl.store import save_npy
    from trainables.train import build_model, load_checkpoint

    device = pick_device()
    network = load_checkpoint(build_model(config, dataset.spec.num_outputs), result.checkpoint).to(device)
    cache, position = ResizeCache(dataset, config.data.resize), dataset.index_of
    for image_id in test_ids:
        record = dataset.records[position[image_id]]
        image = match_channels(np.asarray(cache[position[image_id]].image), config.model.in_channels)
        probabilities = torch.from_numpy(predict_probabilities(network, image[None], dataset.spec.task, device)[0])
        full = to_original_size(probabilities, read_image(record.image).shape[:2]).numpy()
        mask = confident_mask(full, dataset.spec.task, None, None, PSEUDO_CONFIDENCE)
        if sure_fraction(mask) >= PSEUDO_SURE_FRACTION:
            save_npy(out / f"{record.image.stem}.npy", mask)
    if not out.is_dir():
        return None  # no test image was sure enough: the run is the baseline's
    pseudo = PseudoSpec(images=dataset.spec.images, masks=str(out))
    return SegmentationDataset(dataset.spec.model_copy(update={"pseudo": pseudo}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="tgs_salt")
    parser.add_argument("--resize", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tricks", default=",".join(name for name in TRICKS if name != "baseline"))
    args = parser.parse_args()
    if not REALDATA.is_dir():
        print(f"skipped: no {REALDATA}")
        return
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(tempfile.mkdtemp(prefix=f"tricks-{args.dataset}-"))
    full_yaml = write_yaml(args.dataset, work, None)
    test_ids, _ = test_split(full_yaml, 0)
    dataset = SegmentationDataset(load_dataset_spec(full_yaml))
    stats = label_stats(dataset)
    plan = plan_data(dataset, stats)
    test = set(test_ids)
    train_ids = [i for i in dataset.ids if i not in test]
    # the audit a user runs: on the training images they have (the test images' labels are never read)
    train_rows = np.array([i for i, image_id in enumerate(dataset.ids) if image_id not in test])
    dropped = set(dropped_by_area(DropRule.parse(DROP_RULE), stats.subset(train_rows), dataset.spec.task))
    steps_per_epoch = math.ceil(len(train_ids) / 8)  # every run: the same steps, one pass of the full split
    base = {"model.encoder": "resnet18", "model.in_channels": plan.in_channels, "data.resize": args.resize,
            "data.flips": plan.flips.policy.model_dump(mode="json"), "train.epochs": args.epochs,
            "train.min_steps_per_epoch": steps_per_epoch}
    print(f"{args.dataset}: {len(train_ids)} training images ({len(dropped)} selected by {DROP_RULE}), "
          f"{len(test_ids)} test images, {args.resize} px, {args.epochs} epochs x {steps_per_epoch} steps, "
          f"{args.seeds} seeds", flush=True)
    rows, baselines = {}, {}
    for name in ["baseline", *[t for t in args.tricks.split(",") if t]]:
        if name not in TRICKS:
            raise SystemExit(f"unknown trick '{name}'; choose from {', '.join(TRICKS)}")
        ids = [i for i in train_ids if i not in dropped] if name == "drop_area_z" else train_ids
        scores, seconds, images = [], [], []
        for seed in range(args.seeds):
            config, data = config_for(TRICKS[name], base, seed), TrainData.from_ids(dataset, ids, [])
            if name == "pseudo":
                extended = pseudo_labelled(*baselines[seed], dataset, test_ids, work / "pseudo-masks" / str(seed))
                extended = extended or dataset
                extra = [r.id for r in extended.records if r.training_only]
                # the same optimizer steps: one pass is longer with the pseudo images, so fewer epochs
                per_epoch = math.ceil((len(train_ids) + len(extra)) / 8)
                config = config_for({"train.epochs": round(args.epochs * steps_per_epoch / per_epoch),
                                     "train.min_steps_per_epoch": per_epoch}, base, seed)
                data = TrainData.from_ids(extended, train_ids + extra, [])
                print(f"pseudo, seed {seed}: {len(extra)} of {len(test_ids)} test images pseudo-labelled, "
                      f"{config.train.epochs} epochs x {per_epoch} steps", flush=True)
            start = time.perf_counter()
            result = train(config, data, out_dir=work / name / str(seed), keep="final")
            if name == "baseline":
                baselines[seed] = (result, config)
            seconds.append(time.perf_counter() - start)
            images.append(sum(h["train_images"] for h in result.history))
            scores.append(score_on_test(result, config, dataset, test_ids, full_yaml))
            print(json.dumps({"trick": name, "seed": seed, "score": scores[-1], "image_epochs": images[-1],
                              "seconds": round(seconds[-1], 1)}), flush=True)
        rows[name] = {"scores": scores, "mean": float(np.mean(scores)), "sd": float(np.std(scores, ddof=1)) if
                      len(scores) > 1 else 0.0, "image_epochs": int(np.mean(images)), "seconds": float(np.mean(seconds))}
    baseline = rows["baseline"]
    print(f"\n| trick | held-out score, mean +- sd ({args.seeds} seeds) | difference from baseline | "
          f"image-epochs per run | seconds per run |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        difference = "-" if name == "baseline" else f"{row['mean'] - baseline['mean']:+.3f}"
        print(f"| {name} | {row['mean']:.3f} +- {row['sd']:.3f} | {difference} | {row['image_epochs']} | "
              f"{row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
