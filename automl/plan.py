"""What the data decides for every model of a study, before any trial runs (nnU-Net's plan, in small):
how many input channels the images have, how horizontal flips treat the classes, which images the
dataset's `exclude` list leaves out. Saved in study.yaml
(`decisions`) and pinned into every trial's config, so promote and predict train and infer the same way."""

from __future__ import annotations

from dataclasses import dataclass

from automl.data.dataset import SegmentationDataset
from automl.data.flips import FlipDecision, decide_flips
from automl.data.stats import LabelStats


@dataclass(frozen=True)
class DataPlan:
    in_channels: int
    channels_note: str
    flips: FlipDecision
    excluded: tuple[str, ...] = ()  # image ids the dataset.yaml's `exclude` list left out

    def defaults(self) -> dict:
        """TrialConfig keys these decisions set (a space or --set that pins one wins)."""
        return {"model.in_channels": self.in_channels, "data.flips": self.flips.policy.model_dump(mode="json")}

    def to_dict(self) -> dict:
        return {"in_channels": self.in_channels, "channels_note": self.channels_note, "flips": self.flips.to_dict(),
                "excluded": list(self.excluded)}

    def notes(self) -> list[str]:
        return [note for note in (self.channels_note, self.flips.note) if note]


def plan_data(dataset: SegmentationDataset, stats: LabelStats) -> DataPlan:
    channels = stats.input_channels()
    note = (f"images: all {len(stats.ids)} are single-channel, so models take 1 input channel "
            f"(--set model.in_channels=3 repeats it 3 times instead)") if channels == 1 else ""
    return DataPlan(channels, note, decide_flips(dataset.spec, stats), tuple(dataset.excluded))
