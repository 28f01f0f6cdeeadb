"""`automl data inspect`: what a dataset holds, as numbers and a table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from automl.data.dataset import SegmentationDataset, pseudo_records
from automl.data.stats import label_stats


def inspect_dataset(dataset_yaml: str | Path, console: Console | None = None) -> dict:
    dataset = SegmentationDataset.from_yaml(dataset_yaml, pseudo=False)  # the labelled images; pseudo counted apart
    spec = dataset.spec
    stats = label_stats(dataset)
    group_sizes = np.array(list(Counter(stats.groups).values()))
    summary = {
        "name": spec.name,
        "task": spec.task,
        "format": spec.labels.format,
        "images": len(dataset),
        "unlabeled_images": len(dataset.listing.unlabeled_images),
        "excluded": len(dataset.excluded),
        "pseudo_labelled": len(pseudo_records(spec)) if spec.pseudo else 0,
        "orphan_labels": len(dataset.listing.orphan_labels),
        "groups": len(group_sizes),
        "images_per_group": [int(group_sizes.min()), float(np.median(group_sizes)), int(group_sizes.max())],
        "sizes": Counter(f"{w}x{h}" for h, w in stats.sizes.tolist()).most_common(),
        "pixels": Counter(pixel_format(c, b) for c, b in zip(stats.channels.tolist(), stats.bits.tolist())
                          ).most_common(),
        "input_channels": stats.input_channels(),
        "notes": [issue.detail for issue in dataset.listing.issues if not issue.fatal],
        "classes": [
            {"name": name, "images": int(stats.presence[:, c].sum()), "pixel_share": float(stats.share[c])}
            for c, name in enumerate(spec.class_names)
        ],
    }
    _print(summary, console or Console())
    return summary


def pixel_format(channels: int, bits: int) -> str:
    if channels == 0:
        return "unreadable"
    return f"{bits}-bit {'gray' if channels == 1 else 'colour'}"


def _print(summary: dict, console: Console) -> None:
    n = summary["images"]
    console.print(f"[bold]{summary['name']}[/] · {summary['task']} · {summary['format']} · {n} labelled images "
                  f"in {summary['groups']} groups (images per group min/median/max "
                  f"{'/'.join(str(v) for v in summary['images_per_group'])})")
    if summary["pseudo_labelled"]:
        console.print(f"{summary['pseudo_labelled']} pseudo-labelled images train with them (`pseudo` in the "
                      f"dataset.yaml); they are not inspected, audited, validated or scored")
    if summary["excluded"]:
        console.print(f"{summary['excluded']} images are excluded from training (`exclude` in the dataset.yaml)")
    if summary["unlabeled_images"] or summary["orphan_labels"]:
        console.print(f"[yellow]{summary['unlabeled_images']} images without labels are left out, "
                      f"{summary['orphan_labels']} labels have no image (see `automl data audit`)[/]")
    sizes = ", ".join(f"{size} ×{count}" for size, count in summary["sizes"][:5])
    more = f" (+{len(summary['sizes']) - 5} more sizes)" if len(summary["sizes"]) > 5 else ""
    console.print(f"image sizes (WxH): {sizes}{more}")
    pixels = ", ".join(f"{kind} ×{count}" for kind, count in summary["pixels"])
    deep = any("16-bit" in kind or "32-bit" in kind for kind, _ in summary["pixels"])
    console.print(f"pixels: {pixels}; models take {summary['input_channels']} input channel"
                  f"{'s' if summary['input_channels'] > 1 else ''}"
                  + ("; deeper than 8 bits: each image is scaled from its own min..max to 0..255" if deep else ""))
    for note in summary["notes"]:
        console.print(f"note: {note}")
    table = Table("class", "images with it", "share of images", "pixel share", title="classes")
    for row in summary["classes"]:
        table.add_row(row["name"], str(row["images"]), f"{row['images'] / max(n, 1):.1%}",
                      f"{row['pixel_share']:.2%}")
    console.print(table)
