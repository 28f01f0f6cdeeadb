"""Architecture + encoder -> an smp model. Every smp architecture; smp encoders and timm's through `tu-`."""

from __future__ import annotations

from functools import lru_cache

import torch

from trainables.registry import unknown_name_message

TIMM_ONLY = {"dpt"}  # smp builds DPT on timm encoders only
SIZE_MULTIPLE = 32


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


def _short(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:200]


@lru_cache(maxsize=None)
def _trial_build(arch: str, encoder: str, in_channels: int) -> tuple[torch.nn.Module | None, str | None]:
    """(a weightless model, None) or (None, why smp refuses the pair). Built on the meta device (no memory,
    no weights); an encoder that reads tensor values while it is built is built on the CPU instead."""
    import warnings

    import segmentation_models_pytorch as smp

    def build(device: str) -> torch.nn.Module:
        with warnings.catch_warnings(), torch.device(device):
            warnings.simplefilter("ignore")
            return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=2,
                                    in_channels=in_channels).eval()

    try:
        try:
            # smp re-creates the first conv for in_channels != 3 outside the device context: move it back
            return build("meta").to("meta"), None
        except (RuntimeError, NotImplementedError) as e:
            if "meta" not in str(e).lower():
                raise
            return build("cpu"), None
    except Exception as e:  # smp raises ValueError, KeyError, TypeError... for pairs it cannot build
        return None, _short(e)


@lru_cache(maxsize=None)
def _run_error(arch: str, encoder: str, in_channels: int, height: int, width: int) -> str | None:
    model, error = _trial_build(arch, encoder, in_channels)
    if error:
        return error
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            segment(model, torch.zeros(1, in_channels, height, width, device=device))
    except Exception as e:  # a fixed-size encoder (Swin at 224), a decoder that pools too far (PAN below 128)
        return _short(e)
    return None


def check_model(arch: str, encoder: str, in_channels: int = 3, sizes=()) -> None:
    """Raise ValueError naming the pair when smp cannot build `arch` on `encoder`, or, for each (height,
    width) in `sizes`, when the model cannot run an input of that size. Shapes only: no weights, no data."""
    arch = arch.lower()
    _, error = _trial_build(arch, encoder, in_channels)
    if error:
        raise ValueError(f"smp cannot build {arch} with encoder {encoder} ({error}); choose another pair")
    for height, width in sizes:
        error = _run_error(arch, encoder, in_channels, int(height), int(width))
        if error:
            raise ValueError(f"{arch} with encoder {encoder} cannot run {height}x{width} inputs ({error}); "
                             f"choose another size or pair")


def segment(model: torch.nn.Module, x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """The model's logits for a batch of any side: the input is padded up to a multiple of `multiple`
    (encoders downsample by 32) and the output cropped back, so sizes like 101 need no resize."""
    height, width = x.shape[-2:]
    return model(pad_to_multiple(x, multiple))[..., :height, :width]


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """Zero-pad the bottom and right of a batch up to sides that are multiples of `multiple`."""
    extra_h, extra_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    return torch.nn.functional.pad(x, (0, extra_w, 0, extra_h)) if extra_h or extra_w else x


def create_model(arch: str, encoder: str, num_outputs: int, encoder_weights: str | None = None,
                 in_channels: int = 3, **kwargs) -> torch.nn.Module:
    """smp.create_model with names checked; None-valued kwargs are dropped so a search space may leave a
    key unset. Call it through `segment` to feed it any input side."""
    import segmentation_models_pytorch as smp

    arch = check_arch(arch)
    check_encoder(encoder, arch)
    options = {key: value for key, value in kwargs.items() if value is not None}
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=encoder_weights, classes=num_outputs,
                            in_channels=in_channels, **options)
