"""Contract test over every registered architecture, in the spirit of smp's own model tests."""

from __future__ import annotations

import pytest
import torch

from trainables.models import MIN_INPUT, architectures, check_encoder, create_model

TINY_ENCODER = "tu-test_resnet"  # timm's model for unit tests: ~1M parameters


@pytest.mark.parametrize("arch", architectures())
def test_every_architecture_runs_forward_and_backward(arch):
    torch.manual_seed(0)
    side = max(64, MIN_INPUT.get(arch, 64))
    model = create_model(arch, TINY_ENCODER, num_outputs=3)
    x = torch.randn(2, 3, side, side)
    logits = model(x)
    assert logits.shape == (2, 3, side, side)
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    reached = [g for g in grads if g is not None]  # some heads keep a few unused parameters (DPT)
    assert len(reached) >= 0.9 * len(grads) and all(torch.isfinite(g).all() for g in reached)


def test_architecture_names_are_case_insensitive_and_cover_smp():
    assert {"unet", "unetplusplus", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "linknet", "manet", "pan",
            "upernet", "segformer"} <= set(architectures())
    assert create_model("DeepLabV3Plus", TINY_ENCODER, 1).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_none_kwargs_are_dropped():
    model = create_model("unet", TINY_ENCODER, 2, decoder_attention_type=None)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("name, close", [("resnet181", "'resnet18'"), ("tu-resnet5O", "'tu-resnet50'"),
                                         ("efficientnet_b0", "'efficientnet-b0'")])
def test_wrong_encoder_lists_close_matches(name, close):
    with pytest.raises(ValueError, match=f"unknown .*encoder '{name}'; did you mean .*{close}"):
        check_encoder(name)


def test_wrong_architecture_lists_close_matches():
    with pytest.raises(ValueError, match="did you mean 'unetplusplus'"):
        create_model("unetplusplu", TINY_ENCODER, 1)
