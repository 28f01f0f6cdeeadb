"""Architecture + encoder -> an smp model. Every smp architecture; smp encoders and timm's through `tu-`."""

from __future__ import annotations

from functools import lru_cache

import torch

from trainables.registry import unknown_name_message

# Smallest input side each architecture accepts (PAN pools the 1/32 feature map once more).
MIN_INPUT = {"pan": 128}
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


@lru_cache(maxsize=None)
def _build_error(arch: str, encoder: str) -> str | None:
    """Why smp refuses this pair, or None. Built on the meta device (no memory, no weights); where an
    encoder cannot be built there (it reads tensor values while building), it is built on the CPU."""
    import warnings

    import segmentation_models_pytorch as smp

    def build(device: str) -> None:
        with warnings.catch_warnings(), torch.device(device):
            warnings.simplefilter("ignore")
            smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=2)

    try:
        try:
            build("meta")
        except (RuntimeError, NotImplementedError) as e:
            if "meta" not in str(e):
                raise
            build("cpu")
    except Exception as e:  # smp raises ValueError, KeyError or AttributeError for pairs it cannot build
        return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]
    return None


def check_buildable(arch: str, encoder: str) -> None:
    """Raise ValueError naming the pair when smp cannot build `arch` on `encoder`."""
    error = _build_error(arch.lower(), encoder)
    if error:
        raise ValueError(f"smp cannot build {arch} with encoder {encoder} ({error}); choose another pair")


def pad_to_multiple(model: torch.nn.Module, multiple: int = SIZE_MULTIPLE) -> torch.nn.Module:
    """Let the model take any input side: pad the input up to a multiple of `multiple` (encoders
    downsample by 32) and crop the output back. Hooks, so the state_dict keeps smp's own keys."""
    def pad(module, args):
        x = args[0]
        height, width = x.shape[-2:]
        extra_h, extra_w = -height % multiple, -width % multiple
        module.automl_input_size = (height, width)
        if extra_h or extra_w:
            return (torch.nn.functional.pad(x, (0, extra_w, 0, extra_h)), *args[1:])
        return None

    def crop(module, args, output):
        height, width = module.automl_input_size
        if tuple(output.shape[-2:]) != (height, width):
            return output[..., :height, :width]
        return None

    model.register_forward_pre_hook(pad)
    model.register_forward_hook(crop)
    return model


def create_model(arch: str, encoder: str, num_outputs: int, encoder_weights: str | None = None,
                 in_channels: int = 3, **kwargs) -> torch.nn.Module:
    """smp.create_model with names checked, taking any input size; None-valued kwargs are dropped so a
    search space may leave a key unset."""
    import segmentation_models_pytorch as smp

    arch = check_arch(arch)
    check_encoder(encoder, arch)
    check_buildable(arch, encoder)
    options = {key: value for key, value in kwargs.items() if value is not None}
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=encoder_weights, classes=num_outputs,
                             in_channels=in_channels, **options)
    return pad_to_multiple(model)
