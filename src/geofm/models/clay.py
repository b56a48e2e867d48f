"""The Clay v1 / v1.5 encoder, written here and state-dict compatible with the official checkpoints.

Facts followed to the letter: ../shared/reference/clay-v1.md. The module tree mirrors upstream so that
``state_dict()`` keys are exactly the official encoder keys (no prefix). Inference only: no masking and
no shuffling, so the output is ``[B, 1 + L, D]`` with index 0 the class token (after the final LayerNorm)
and 1..L the patch tokens in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geofm.errors import ModelError

WAVE_DIM = 128  # width of the wavelength code and of the weight-generator transformer
NUM_LATENT_TOKENS = 128  # learned tokens of the weight generator (their outputs are discarded)
META_CHANNELS = 8  # last channels of each patch token: [time(4) | latlon(4)]
KERNEL_SCALE = 0.02  # upstream multiplies the generated conv weight (not the bias) by this


# ---- encodings ---------------------------------------------------------------------------------
def wave_encoding(waves: Tensor, dim: int = WAVE_DIM, temperature: float = 10000.0) -> Tensor:
    """1-D sin/cos code of wavelengths (micrometres): [C] -> [C, dim], all sines then all cosines."""
    omega = torch.arange(dim // 2, device=waves.device) / (dim // 2 - 1)
    omega = 1.0 / (temperature**omega)
    scaled = waves[:, None] * omega[None, :]
    return torch.cat((scaled.sin(), scaled.cos()), dim=1).to(torch.float32)


def position_encoding(grid: int, dim: int, gsd: Tensor, temperature: float = 10000.0) -> Tensor:
    """Clay's 2-D sin/cos code scaled by the GSD: [grid*grid, dim], blocks [sin x, cos x, sin y, cos y].

    Reproduces upstream's quirk exactly: the exponent is normalised twice (``2 * (i / (K - 1)) / dim``),
    so every frequency lies between ``gsd / 10000**(2 / dim)`` and ``gsd``. ``dim`` is ``D - 8``.
    """
    if dim % 4:
        raise ModelError(f"position encoding width must be a multiple of 4, got {dim}")
    device = gsd.device
    y, x = torch.meshgrid(torch.arange(grid, device=device), torch.arange(grid, device=device), indexing="ij")
    omega = torch.arange(dim // 4, device=device) / (dim // 4 - 1)
    omega = 1.0 / (temperature ** (2 * omega / dim)) * (gsd / 1.0)
    yy = y.flatten()[:, None] * omega[None, :]
    xx = x.flatten()[:, None] * omega[None, :]
    return torch.cat((xx.sin(), xx.cos(), yy.sin(), yy.cos()), dim=1).to(torch.float32)


# ---- dynamic (wavelength-conditioned) patch embedding ----------------------------------------
class FCBlock(nn.Module):
    """Residual MLP on the wavelength code: ``x + gelu(l2(gelu(l1(x))))``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class WavesTransformer(nn.Module):
    """Generates a conv kernel row per band and the conv bias from the band set's wavelength codes."""

    def __init__(self, wave_dim: int, output_dim: int, num_latent_tokens: int, embed_dim: int) -> None:
        super().__init__()
        self.num_latent_tokens = num_latent_tokens
        self.weight_tokens = nn.Parameter(torch.randn(num_latent_tokens, wave_dim) * 0.02)
        self.bias_token = nn.Parameter(torch.randn(1, wave_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=wave_dim, nhead=4, activation="gelu", dropout=0.0, norm_first=False, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(wave_dim, output_dim)
        self.fc_bias = nn.Linear(wave_dim, embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        seq = torch.cat([self.weight_tokens, x, self.bias_token], dim=0)  # unbatched [128 + C + 1, 128]
        out = self.encoder(seq)
        n = self.num_latent_tokens
        weights = self.fc_weight(out[n:-1] + seq[n:-1])  # residual on the band tokens
        bias = self.fc_bias(out[-1])
        return weights, bias


class DynamicEmbedding(nn.Module):
    """DOFA-style patch embedding whose conv kernel is generated from the band wavelengths."""

    def __init__(self, wave_dim: int, num_latent_tokens: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.wave_dim = wave_dim
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.weight_generator = WavesTransformer(
            wave_dim, patch_size * patch_size * embed_dim, num_latent_tokens, embed_dim
        )
        self.fclayer = FCBlock(wave_dim)

    def kernel(self, waves: Tensor) -> tuple[Tensor, Tensor]:
        """Conv weight ``[D, C, p, p]`` (already scaled by 0.02) and bias ``[D]`` for a band set."""
        codes = self.fclayer(wave_encoding(waves, self.wave_dim))
        weight, bias = self.weight_generator(codes)  # [C, p*p*D], [D]
        c, p = waves.shape[0], self.patch_size
        w = weight.view(c, self.embed_dim, p, p).permute(1, 0, 2, 3)
        return w * KERNEL_SCALE, bias

    def forward(self, pixels: Tensor, waves: Tensor, kernel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        weight, bias = kernel if kernel is not None else self.kernel(waves)
        out = F.conv2d(pixels, weight.to(pixels.dtype), bias.to(pixels.dtype), stride=self.patch_size)
        return out.flatten(2).transpose(1, 2)  # [B, L, D], row-major


# ---- transformer (vit-pytorch simple ViT layout) ---------------------------------------------
class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention without qkv/out bias. ``fused`` picks SDPA or explicit math."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.fused = True
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # the plain eager form (vit-pytorch 1.6.8, Clay v1.0), used as a benchmark baseline
            attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
            out = torch.matmul(attn, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)]) for _ in range(depth)
        )

    def forward(self, x: Tensor, keep: Sequence[int] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        kept: dict[int, Tensor] = {}
        for i, (attn, ff) in enumerate(self.layers):
            x = attn(x) + x
            x = ff(x) + x
            if i in keep:
                kept[i] = x
        return self.norm(x), kept


# ---- the encoder ---------------------------------------------------------------------------------
class ClayEncoder(nn.Module):
    """Clay v1/v1.5 encoder (inference form: no masking, no shuffling).

    Inputs: ``pixels`` [B, C, H, W] normalised per band (H = W, multiples of ``patch_size``), ``time``
    [B, 4] = [sin week, cos week, sin hour, cos hour], ``latlon`` [B, 4] = [sin lat, cos lat, sin lon,
    cos lon], ``gsd`` a scalar (metres, one per batch), ``waves`` [C] central wavelengths in micrometres.
    """

    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, mlp_ratio: float = 4.0, patch_size: int = 8
    ) -> None:
        super().__init__()
        if (dim - META_CHANNELS) % 4:
            raise ModelError(f"Clay dim - 8 must be a multiple of 4, got dim={dim}")
        self.dim = dim
        self.patch_size = patch_size
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.patch_embedding = DynamicEmbedding(WAVE_DIM, NUM_LATENT_TOKENS, patch_size, dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, int(dim * mlp_ratio))

    def set_fused_attention(self, fused: bool) -> None:
        """SDPA (default) or the explicit matmul-softmax attention (benchmark baseline)."""
        for attn, _ in self.transformer.layers:
            attn.fused = fused

    def tokens(
        self, pixels: Tensor, time: Tensor, latlon: Tensor, gsd: Tensor | float, waves: Tensor,
        kernel: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Transformer input: [CLS ; patch tokens + position/metadata encodings] -> [B, 1 + L, D]."""
        b, _, h, w = pixels.shape
        if h != w or h % self.patch_size:
            raise ModelError(
                f"Clay needs square inputs whose side is a multiple of {self.patch_size}; got {h}x{w}"
            )
        patches = self.patch_embedding(pixels, waves, kernel)
        grid = int(math.isqrt(patches.shape[1]))
        gsd_t = torch.as_tensor(gsd, dtype=torch.float32, device=patches.device)
        pos = position_encoding(grid, self.dim - META_CHANNELS, gsd_t).to(patches.dtype)
        meta = torch.cat((time, latlon), dim=-1).to(device=patches.device, dtype=patches.dtype)
        enc = torch.cat((pos.expand(b, -1, -1), meta[:, None, :].expand(-1, grid * grid, -1)), dim=-1)
        patches = patches + enc
        return torch.cat((self.cls_token.to(patches.dtype).expand(b, -1, -1), patches), dim=1)

    def forward(
        self, pixels: Tensor, time: Tensor, latlon: Tensor, gsd: Tensor | float, waves: Tensor,
        kernel: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Encoded tokens [B, 1 + L, D]: index 0 the class token, 1..L patches row-major."""
        out, _ = self.transformer(self.tokens(pixels, time, latlon, gsd, waves, kernel))
        return out

    def forward_features(
        self, pixels: Tensor, time: Tensor, latlon: Tensor, gsd: Tensor | float, waves: Tensor,
        blocks: Sequence[int], kernel: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Final output plus the full token outputs [B, 1 + L, D] after each listed block (0-based,
        before the final LayerNorm), in the order of ``blocks`` (for FPN heads)."""
        depth = len(self.transformer.layers)
        bad = [i for i in blocks if not 0 <= i < depth]
        if bad:
            raise ModelError(f"blocks {bad} out of range for a {depth}-block encoder")
        out, kept = self.transformer(self.tokens(pixels, time, latlon, gsd, waves, kernel), keep=set(blocks))
        return out, [kept[i] for i in blocks]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
