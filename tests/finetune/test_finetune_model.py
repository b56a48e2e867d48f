"""Segmentation model pieces on a tiny random Clay (clay-tiny, RANDOM weights): head shapes, freezing,
losses honouring the ignore id, metrics from a hand-checked confusion matrix, the LR schedule and
seam-free tile blending in prediction."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from geofm.finetune.config import SegmentationConfig
from geofm.finetune.heads import Segmentor, default_feature_blocks, tokens_to_map
from geofm.finetune.module import (
    SegmentationModule,
    build_encoder,
    majority_baseline,
    metrics_from_confusion,
    segmentation_loss,
    warmup_cosine,
)
from geofm.finetune.predict import predict_array, tile_starts, tile_weight

CLASSES = [{"id": 0, "name": "nodata"}, {"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
BANDS = ["blue", "green", "red", "nir"]
WAVES = torch.tensor([0.493, 0.56, 0.665, 0.842])


def tiny_encoder(seed: int = 0) -> torch.nn.Module:
    return build_encoder("clay-tiny", f"random:{seed}")


def inputs(b: int = 2, size: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 4, size, size, generator=g), torch.zeros(b, 4), torch.zeros(b, 4)


@pytest.mark.parametrize("head", ["fpn", "pixelshuffle"])
def test_heads_give_full_resolution_logits(head: str) -> None:
    net = Segmentor(tiny_encoder(), num_classes=4, head=head, head_channels=32)
    pixels, time, latlon = inputs(2, 32)
    out = net(pixels, time, latlon, 10.0, WAVES)
    assert out.shape == (2, 4, 32, 32) and torch.isfinite(out).all()
    out64 = net(*inputs(1, 64), 10.0, WAVES)
    assert out64.shape == (1, 4, 64, 64)


def test_feature_blocks_and_token_maps() -> None:
    assert default_feature_blocks(12) == [3, 5, 7, 11]  # the Clay v1 example
    assert default_feature_blocks(24) == [6, 10, 15, 23]
    assert default_feature_blocks(2) == [0, 0, 1, 1]
    tokens = torch.arange(1 + 16).float()[None, :, None].expand(1, 17, 3)
    m = tokens_to_map(tokens)
    assert m.shape == (1, 3, 4, 4) and m[0, 0, 0, 1] == 2 and m[0, 0, 1, 0] == 5  # row-major, CLS dropped
    with pytest.raises(ValueError, match="feature_blocks"):
        Segmentor(tiny_encoder(), 4, "fpn", feature_blocks=[0, 1, 5, 1])
    with pytest.raises(ValueError, match="unknown head"):
        Segmentor(tiny_encoder(), 4, "unet")


def _step(net: Segmentor) -> dict[str, torch.Tensor]:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    pixels, time, latlon = inputs(2, 32)
    target = torch.randint(0, 4, (2, 32, 32))
    segmentation_loss(net(pixels, time, latlon, 10.0, WAVES), target, "ce", 0).backward()
    opt.step()
    after = net.state_dict()
    return {k: (after[k] - before[k]).abs().max() for k in before if after[k].is_floating_point()}


def test_frozen_encoder_does_not_change_and_the_head_learns() -> None:
    net = Segmentor(tiny_encoder(), 4, "fpn")
    delta = _step(net)
    assert all(v == 0 for k, v in delta.items() if k.startswith("encoder."))
    assert any(v > 0 for k, v in delta.items() if k.startswith("head."))
    assert not net.encoder.training  # frozen encoder stays in eval mode under net.train()


def test_last_blocks_only_or_whole_encoder_trainable() -> None:
    net = Segmentor(tiny_encoder(), 4, "pixelshuffle", head_channels=16, trainable_blocks=1)
    delta = _step(net)
    assert all(v == 0 for k, v in delta.items() if k.startswith("encoder.transformer.layers.0."))
    assert all(v == 0 for k, v in delta.items() if k.startswith("encoder.patch_embedding."))
    assert any(v > 0 for k, v in delta.items() if k.startswith("encoder.transformer.layers.1."))
    net = Segmentor(tiny_encoder(), 4, "fpn", freeze_encoder=False)
    delta = _step(net)
    assert any(v > 0 for k, v in delta.items() if k.startswith("encoder.transformer.layers.0."))
    assert net.encoder.training


@pytest.mark.parametrize("kind", ["ce", "focal", "dice"])
def test_losses_ignore_the_ignore_id(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    target = torch.randint(1, 4, (2, 8, 8), generator=g)
    target[:, :4] = 0  # ignored half
    base = segmentation_loss(logits, target, kind, 0)
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 4, 4, 8, generator=g) * 10  # anything at ignored pixels
    assert segmentation_loss(changed, target, kind, 0) == pytest.approx(base.item(), rel=1e-6)
    # a perfect prediction is (near) zero loss, a wrong one is not
    perfect = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 20
    assert segmentation_loss(perfect, target, kind, 0) < 0.01
    assert segmentation_loss(-perfect, target, kind, 0) > 0.3
    # all pixels ignored: zero, and still differentiable
    z = segmentation_loss(logits.requires_grad_(), torch.zeros_like(target), kind, 0)
    z.backward()
    assert z.item() == 0.0
    with pytest.raises(ValueError, match="unknown loss"):
        segmentation_loss(logits, target, "hinge", 0)


def test_focal_loss_down_weights_easy_pixels() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.0, 0.2]]).T.reshape(1, 2, 1, 2)  # easy pixel, hard pixel
    target = torch.tensor([[[0, 1]]])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    focal = segmentation_loss(logits, target, "focal", ignore_id=255, gamma=2.0)
    pt = torch.exp(-ce)
    assert focal.item() == pytest.approx(((1 - pt) ** 2 * ce).mean().item(), rel=1e-6)


def test_metrics_from_a_hand_checked_confusion_matrix() -> None:
    # rows true, cols predicted; class 0 is the ignore id; class 3 never appears
    cm = np.array([[0, 0, 0, 0], [0, 8, 2, 0], [0, 2, 4, 0], [0, 0, 0, 0]])
    m = metrics_from_confusion(cm, ["nodata", "a", "b", "c"], ignore_id=0)
    iou_a, iou_b = 8 / 12, 4 / 8
    assert m["per_class_iou"] == pytest.approx({"a": iou_a, "b": iou_b})
    assert m["miou"] == pytest.approx((iou_a + iou_b) / 2)
    assert m["weighted_iou"] == pytest.approx((10 * iou_a + 6 * iou_b) / 16)
    assert m["f1"] == pytest.approx((16 / 20 + 8 / 12) / 2)
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["pixels"] == 16 and "c" not in m["per_class_iou"]


def test_majority_baseline_predicts_the_commonest_training_class() -> None:
    train = np.array([[1, 1, 1, 2, 0, 0, 0, 0]])
    evals = np.array([[1, 2, 2, 3, 0]])
    m = majority_baseline(train, evals, 4, 0, ["nodata", "a", "b", "c"])
    assert m["majority_class"] == "a"
    assert m["per_class_iou"]["a"] == pytest.approx(1 / 4)
    assert m["miou"] == pytest.approx((1 / 4 + 0 + 0) / 3)


def test_warmup_then_cosine() -> None:
    f = warmup_cosine(warmup=4, total=14, floor=0.1)
    assert [f(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)


def test_tiles_cover_and_weights_taper() -> None:
    assert tile_starts(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    assert tile_starts(20, 32, 16) == [0]
    w = tile_weight(8)
    assert w.min() > 0 and w[3, 3] == w.max() and w[0, 0] == w.min()


class PixelwiseModule(torch.nn.Module):
    """A stand-in whose logits depend on each pixel alone: blending must then reproduce them exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.0, 1.0, -1.0, 0.5]))
        self.cfg = SegmentationConfig(images=["x.tif"], labels="l.tif", classes=CLASSES, chip_size=16)
        self.bands = BANDS
        self.net = SimpleNamespace(encoder=SimpleNamespace(patch_size=8))  # tiles are multiples of it

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.w[None, :, None, None] * pixels[:, :1] + torch.tensor([0, 0, 0.3, 0])[None, :, None, None]

    def mask_ignore(self, logits: torch.Tensor) -> torch.Tensor:
        return SegmentationModule.mask_ignore(self, logits)


def test_blended_tiles_show_no_seams() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 4000, (4, 40, 52)).astype(np.float32)
    raw[:, 0, 0] = np.nan
    module = PixelwiseModule()
    classes, probs = predict_array(module, raw, tile=16, overlap=8, with_probabilities=True)
    whole, whole_probs = predict_array(module, raw[:, :, :], tile=56, overlap=0, with_probabilities=True)
    np.testing.assert_allclose(probs, whole_probs, atol=1e-5)
    np.testing.assert_array_equal(classes[1:], whole[1:])
    assert classes[0, 0] == 0 and (classes[1:] != 0).all()  # nodata pixel -> ignore id; never elsewhere
    assert set(np.unique(classes[1:])) <= {1, 2, 3}


def test_balanced_class_weights_and_weighted_losses() -> None:
    from geofm.finetune.module import balanced_class_weights

    labels = np.array([1] * 6 + [2] * 2 + [0] * 5)
    w = balanced_class_weights(labels, 4, ignore_id=0)
    assert w[0] == 1.0 and w[3] == 1.0  # ignore id and absent class
    assert w[2] == pytest.approx(3 * w[1]) and (w[1] + w[2]) / 2 == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 2, 4, generator=g)
    target = torch.tensor([[[1, 1, 1, 2], [2, 0, 0, 1]]])
    weights = torch.tensor([1.0, 1.0, 3.0, 1.0])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")[target != 0]
    pw = weights[target[target != 0]]
    want = (ce * pw).sum() / pw.sum()
    assert segmentation_loss(logits, target, "ce", 0, class_weights=weights) == pytest.approx(want.item(), rel=1e-6)
    assert segmentation_loss(logits, target, "ce", 0, class_weights=torch.ones(4)) == pytest.approx(
        segmentation_loss(logits, target, "ce", 0).item(), rel=1e-6)
    assert torch.isfinite(segmentation_loss(logits, target, "dice", 0, class_weights=weights))
