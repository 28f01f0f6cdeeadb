"""Contract test over every registered architecture, in the spirit of smp's own model tests."""

from __future__ import annotations

import pytest
import torch

from trainables.models import _trial_build, architectures, check_encoder, check_model, create_model, segment

TINY_ENCODER = "tu-test_resnet"  # timm's model for unit tests: ~1M parameters


@pytest.mark.parametrize("arch", architectures())
def test_every_architecture_runs_forward_and_backward(arch):
    torch.manual_seed(0)
    side = 128 if arch == "pan" else 64  # PAN pools the 1/32 feature map once more
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


@pytest.mark.parametrize("size", [(101, 101), (100, 70), (17, 45)])
def test_any_input_side_is_padded_in_and_cropped_out(size):
    torch.manual_seed(0)
    model = create_model("unet", TINY_ENCODER, num_outputs=2, in_channels=1).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        out = segment(model, x)
        padded = model(torch.nn.functional.pad(x, (0, -size[1] % 32, 0, -size[0] % 32)))
    assert out.shape == (2, 2, *size)
    torch.testing.assert_close(out, padded[..., :size[0], :size[1]])  # the top-left of the padded output


def test_check_model_knows_what_smp_builds_and_what_runs_at_a_size():
    check_model("pan", TINY_ENCODER, 3, [(128, 128)])
    with pytest.raises(ValueError, match="pan with encoder tu-test_resnet cannot run 64x64 inputs"):
        check_model("pan", TINY_ENCODER, 3, [(64, 64)])
    with pytest.raises(ValueError, match="smp cannot build unetplusplus with encoder mit_b0"):
        check_model("unetplusplus", "mit_b0")
    check_model("unet", "mit_b0", 1, [(64, 64)])  # built on the CPU: Mix Transformers cannot be built on meta


@pytest.mark.parametrize("in_channels", [1, 4])
def test_check_model_runs_smp_encoders_on_other_channel_counts(in_channels):
    # smp replaces the first conv outside the meta-device context: a real 1-channel set (fls_sonar) with
    # resnet18 must not be refused as "Tensor on device meta is not on the expected device cpu"
    check_model("unet", "resnet18", in_channels, [(128, 128)])
    model, _ = _trial_build("unet", "resnet18", in_channels)
    assert all(p.is_meta for p in model.parameters())  # checked without allocating weights
