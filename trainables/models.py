"""Architecture + encoder -> an smp model. Every smp architecture; smp encoders and timm's through `tu-`."""

from __future__ import annotations

from functools import lru_cache

import torch

from trainables.registry import unknown_name_message

# Smallest input side each architecture accepts (PAN pools the 1/32 feature map once more).
MIN_INPUT = {"pan": 128}
TIMM_ONLY = {"dpt"}  # smp builds DPT on timm encoders only


def architectures() -> list[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


@lru_cache(maxsize=1)
def smp_encoders() -> tuple[str, ...]:
    import segmentation_models_pytorch as smp

    return tuple(smp.encoders.get_encoder_names())


@lru_cache(maxsize=1)
def timm_encoders() -> tuple[str, ...]:
    import timm

    return tuple(f"tu-{name}" for name in timm.list_models())


def check_arch(name: str) -> str:
    key = name.lower()
    if key not in architectures():
        raise ValueError(unknown_name_message("architecture", name, architectures()))
    return key


def check_encoder(name: str, arch: str | None = None) -> str:
    if name.startswith("tu-"):
        if name not in timm_encoders():
            raise ValueError(unknown_name_message("timm encoder", name, timm_encoders()))
    elif name not in smp_encoders():
        raise ValueError(unknown_name_message("encoder", name, smp_encoders() + timm_encoders()))
    if arch is not None and arch.lower() in TIMM_ONLY and not name.startswith("tu-"):
        raise ValueError(f"{arch} needs a timm encoder ('tu-...'), got '{name}'")
    return name


def create_model(arch: str, encoder: str, num_outputs: int, encoder_weights: str | None = None,
                 **kwargs) -> torch.nn.Module:
    """smp.create_model with names checked; None-valued kwargs are dropped so a search space may leave
    a key unset."""
    import segmentation_models_pytorch as smp

    arch = check_arch(arch)
    check_encoder(encoder, arch)
    options = {key: value for key, value in kwargs.items() if value is not None}
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=encoder_weights, classes=num_outputs,
                            **options)
