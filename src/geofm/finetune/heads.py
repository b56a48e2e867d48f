"""Segmentation heads on the Clay encoder and the ``Segmentor`` that joins them.

- ``FPNHead``: the Clay v1 example. Patch tokens after several blocks (plus the final output) are turned
  into maps of scales x4, x2, x1, x1/2, x1 of the patch grid, brought to H/2, concatenated, fused by 1x1
  convs and upsampled bilinearly to the input size.
- ``PixelShuffleHead``: the Clay v1.5 example. Final patch tokens -> two 3x3 conv+BN+ReLU -> 3x3 conv to
  64 x p x p channels -> PixelShuffle(p) -> 3x3 conv to classes, at full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geofm.errors import InputError


def tokens_to_map(tokens: Tensor) -> Tensor:
    """[B, 1+L, D] tokens (CLS first) -> [B, D, g, g] patch map (row-major patches)."""
    patches = tokens[:, 1:, :]
    b, n, d = patches.shape
    g = int(round(n ** 0.5))
    if g * g != n:
        raise InputError(f"{n} patch tokens do not form a square grid")
    return patches.transpose(1, 2).reshape(b, d, g, g)


def default_feature_blocks(depth: int) -> list[int]:
    """Blocks tapped by the FPN: the v1 example's 3, 5, 7, 11 for depth 12, spread alike for others."""
    return [min(depth - 1, round(b * (depth - 1) / 11)) for b in (3, 5, 7, 11)]


class FPNHead(nn.Module):
    """Clay v1 FPN head: 4 intermediate maps + the final one at 5 scales, fused at H/2, then to classes."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, 2), nn.BatchNorm2d(dim), nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, 2),
        )
        self.fpn2 = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2)
        self.fpn5 = nn.Identity()
        self.fusion = nn.Conv2d(5 * dim, dim, 1)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, maps: Sequence[Tensor], out_size: int) -> Tensor:
        """``maps``: 5 patch maps [B, D, g, g] (4 intermediate, then final); returns logits [B, K, S, S]."""
        if len(maps) != 5:
            raise InputError(f"FPNHead needs 5 feature maps, got {len(maps)}")
        g = maps[0].shape[-1]
        half = max(out_size // 2, 1)
        levels = [self.fpn1(maps[0]), self.fpn2(maps[1]), self.fpn3(maps[2]), self.fpn4(maps[3]) if g > 1
                  else maps[3], self.fpn5(maps[4])]
        levels = [lv if lv.shape[-1] == half else F.interpolate(lv, size=(half, half), mode="nearest")
                  for lv in levels]
        x = self.classifier(self.fusion(torch.cat(levels, dim=1)))
        return F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False)


class PixelShuffleHead(nn.Module):
    """Clay v1.5 head: convs on the final patch map, PixelShuffle back to pixels, 3x3 conv to classes."""

    def __init__(self, dim: int, num_classes: int, patch_size: int = 8, channels: int = 512,
                 shuffle_channels: int = 64) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.body = nn.Sequential(
            nn.Conv2d(dim, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, shuffle_channels * patch_size * patch_size, 3, padding=1),
            nn.PixelShuffle(patch_size),
        )
        self.classifier = nn.Conv2d(shuffle_channels, num_classes, 3, padding=1)

    def forward(self, final: Tensor, out_size: int) -> Tensor:
        x = self.classifier(self.body(final))
        if x.shape[-1] != out_size:
            x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False)
        return x


class Segmentor(nn.Module):
    """Clay encoder + a segmentation head: normalised pixels [B,C,S,S] -> class logits [B,K,S,S].

    ``freeze_encoder`` keeps the encoder's weights fixed (the Clay examples do this);
    ``trainable_blocks`` then unfreezes only the last N transformer blocks (and the final LayerNorm).
    """

    def __init__(
        self, encoder: nn.Module, num_classes: int, head: str = "fpn",
        feature_blocks: Sequence[int] | None = None, head_channels: int = 256,
        freeze_encoder: bool = True, trainable_blocks: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        dim, patch = int(encoder.dim), int(encoder.patch_size)
        depth = len(encoder.transformer.layers)
        self.head_kind = head
        if head == "fpn":
            blocks = list(feature_blocks) if feature_blocks else default_feature_blocks(depth)
            if len(blocks) != 4 or not all(0 <= b < depth for b in blocks):
                raise InputError(f"feature_blocks must be 4 block indices in 0..{depth - 1}, got {blocks}")
            self.feature_blocks = blocks
            self.head: nn.Module = FPNHead(dim, num_classes)
        elif head == "pixelshuffle":
            self.feature_blocks = []
            self.head = PixelShuffleHead(dim, num_classes, patch, head_channels)
        else:
            raise InputError(f"unknown head {head!r}: use 'fpn' or 'pixelshuffle'")
        self.set_trainable(freeze_encoder, trainable_blocks)

    def set_trainable(self, freeze_encoder: bool, trainable_blocks: int = 0) -> None:
        """Freeze the encoder (optionally except its last N blocks + final norm) or train it all."""
        self.encoder_frozen = freeze_encoder and trainable_blocks == 0
        for p in self.encoder.parameters():
            p.requires_grad = not freeze_encoder
        if freeze_encoder and trainable_blocks > 0:
            layers = self.encoder.transformer.layers
            for layer in list(layers)[-trainable_blocks:]:
                for p in layer.parameters():
                    p.requires_grad = True
            for p in self.encoder.transformer.norm.parameters():
                p.requires_grad = True

    def train(self, mode: bool = True) -> Segmentor:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward(
        self, pixels: Tensor, time: Tensor, latlon: Tensor, gsd: Tensor | float, waves: Tensor
    ) -> Tensor:
        size = pixels.shape[-1]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            if self.head_kind == "fpn":
                final, feats = self.encoder.forward_features(
                    pixels, time, latlon, gsd, waves, self.feature_blocks
                )
                maps = [tokens_to_map(t) for t in (*feats, final)]
            else:
                maps = [tokens_to_map(self.encoder(pixels, time, latlon, gsd, waves))]
        if self.head_kind == "fpn":
            return self.head(maps, size)
        return self.head(maps[0], size)
