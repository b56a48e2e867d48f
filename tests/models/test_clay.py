"""The Clay encoder written here: official keys/shapes/counts, parity with the official code's own tiny
checkpoint, encodings against the formulas, and an independent functional forward with perturbed norms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geofm.models.clay import ClayEncoder, count_parameters, position_encoding
from helpers import SHARED, perturbed_tiny
from helpers import TINY_CLAY as TINY

PARITY = SHARED / "reference" / "clay-parity-tiny-v15"


def expected_keys(dim: int, depth: int, heads: int, dim_head: int) -> dict[str, tuple[int, ...]]:
    """The official encoder keys and shapes, transcribed from clay-v1.md section 2."""
    inner, mlp = heads * dim_head, 4 * dim
    wg = "patch_embedding.weight_generator."
    el = wg + "encoder.layers.0."
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        wg + "weight_tokens": (128, 128), wg + "bias_token": (1, 128),
        el + "self_attn.in_proj_weight": (384, 128), el + "self_attn.in_proj_bias": (384,),
        el + "self_attn.out_proj.weight": (128, 128), el + "self_attn.out_proj.bias": (128,),
        el + "linear1.weight": (2048, 128), el + "linear1.bias": (2048,),
        el + "linear2.weight": (128, 2048), el + "linear2.bias": (128,),
        el + "norm1.weight": (128,), el + "norm1.bias": (128,), el + "norm2.weight": (128,), el + "norm2.bias": (128,),
        wg + "fc_weight.weight": (64 * dim, 128), wg + "fc_weight.bias": (64 * dim,),
        wg + "fc_bias.weight": (dim, 128), wg + "fc_bias.bias": (dim,),
        "patch_embedding.fclayer.l1.weight": (128, 128), "patch_embedding.fclayer.l1.bias": (128,),
        "patch_embedding.fclayer.l2.weight": (128, 128), "patch_embedding.fclayer.l2.bias": (128,),
        "transformer.norm.weight": (dim,), "transformer.norm.bias": (dim,),
    }
    for i in range(depth):
        t = f"transformer.layers.{i}."
        keys |= {
            t + "0.norm.weight": (dim,), t + "0.norm.bias": (dim,),
            t + "0.to_qkv.weight": (3 * inner, dim), t + "0.to_out.weight": (dim, inner),
            t + "1.net.0.weight": (dim,), t + "1.net.0.bias": (dim,),
            t + "1.net.1.weight": (mlp, dim), t + "1.net.1.bias": (mlp,),
            t + "1.net.3.weight": (dim, mlp), t + "1.net.3.bias": (dim,),
        }
    return keys


@pytest.mark.parametrize(
    ("cfg", "n_keys", "n_params", "n_stem"),
    [
        ((1024, 24, 16, 64), 265, 311_442_944, 9_228_800),
        ((768, 12, 12, 64), 145, 92_102_144, 7_082_240),
        ((72, 2, 4, 16), 45, 1_367_600, None),
    ],
    ids=["clay-v1.5", "clay-v1", "tiny"],
)
def test_state_dict_keys_shapes_and_counts(cfg: tuple[int, int, int, int], n_keys: int, n_params: int,
                                           n_stem: int | None) -> None:
    with torch.device("meta"):  # no memory for the 311 M parameters
        model = ClayEncoder(*cfg)
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_keys(*cfg)
    assert len(sd) == n_keys
    assert count_parameters(model) == n_params
    if n_stem is not None:
        assert count_parameters(model.patch_embedding) == n_stem
    assert not list(model.buffers())


def _parity_inputs(call: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    io = np.load(PARITY / "io.npz")
    args = {k: torch.from_numpy(io[f"{call}_{k}"]).float() for k in ("pixels", "time", "latlon", "gsd", "waves")}
    return args, io[f"{call}_output"]


@pytest.fixture(scope="module")
def official_tiny() -> ClayEncoder:
    if not PARITY.is_dir():
        pytest.skip(f"parity reference not found at {PARITY}")
    ckpt = torch.load(PARITY / "ckpt.pt", weights_only=True)
    sd = {k.removeprefix("model.encoder."): v for k, v in ckpt["state_dict"].items()}
    model = ClayEncoder(**TINY)
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.mark.parametrize("call", ["call1", "call2"])
def test_parity_with_official_tiny_checkpoint(official_tiny: ClayEncoder, call: str) -> None:
    args, expected = _parity_inputs(call)
    with torch.inference_mode():
        out = official_tiny(**args).numpy()
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() < 1e-5


def test_parity_eager_attention_matches(official_tiny: ClayEncoder) -> None:
    """The explicit matmul-softmax attention (v1.0 form, benchmark baseline) computes the same function."""
    args, expected = _parity_inputs("call1")
    official_tiny.set_fused_attention(False)
    try:
        with torch.inference_mode():
            out = official_tiny(**args).numpy()
    finally:
        official_tiny.set_fused_attention(True)
    assert np.abs(out - expected).max() < 1e-5


def test_position_encoding_matches_formula() -> None:
    dim, gsd, grid = 72, 10.0, 4
    p = dim - 8
    k = p // 4
    pe = position_encoding(grid, p, torch.tensor(gsd)).numpy()
    assert pe.shape == (grid * grid, p)
    f = np.array([gsd * 10000 ** (-2 * (i / (k - 1)) / p) for i in range(k)])
    for r, c in [(0, 0), (1, 3), (3, 2)]:
        row = pe[r * grid + c]
        np.testing.assert_allclose(row[:k], np.sin(c * f), atol=1e-5)
        np.testing.assert_allclose(row[k:2 * k], np.cos(c * f), atol=1e-5)
        np.testing.assert_allclose(row[2 * k:3 * k], np.sin(r * f), atol=1e-5)
        np.testing.assert_allclose(row[3 * k:], np.cos(r * f), atol=1e-5)
    # the quirk: every frequency lies in [gsd / 10000**(2/p), gsd]
    assert f.max() == pytest.approx(gsd) and f.min() == pytest.approx(gsd / 10000 ** (2 / p))


def test_tokens_carry_position_and_metadata_not_cls() -> None:
    torch.manual_seed(0)
    model = ClayEncoder(**TINY).eval()
    pixels = torch.randn(2, 3, 16, 16)
    waves = torch.tensor([0.665, 0.56, 0.493])
    time = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    latlon = torch.tensor([[-0.1, -0.2, -0.3, -0.4], [0.9, 0.8, 0.7, 0.6]])
    with torch.inference_mode():
        tokens = model.tokens(pixels, time, latlon, torch.tensor(10.0), waves)
        plain = model.patch_embedding(pixels, waves)
    assert tokens.shape == (2, 5, 72)
    assert torch.equal(tokens[:, 0], model.cls_token.detach()[0].expand(2, -1))  # CLS carries nothing
    added = (tokens[:, 1:] - plain).numpy()
    meta = torch.cat([time, latlon], dim=1).numpy()
    np.testing.assert_allclose(added[:, :, -8:], np.broadcast_to(meta[:, None], (2, 4, 8)), atol=1e-5)
    # patch (r=1, c=0) = token 3: x block sin(0)=0, cos(0)=1; y block sin(f), cos(f)
    k = 16
    f = np.array([10.0 * 10000 ** (-2 * (i / (k - 1)) / 64) for i in range(k)])
    np.testing.assert_allclose(added[0, 2, :k], 0.0, atol=1e-5)
    np.testing.assert_allclose(added[0, 2, k:2 * k], 1.0, atol=1e-5)
    np.testing.assert_allclose(added[0, 2, 2 * k:3 * k], np.sin(f), atol=1e-5)
    np.testing.assert_allclose(added[1, 2, 3 * k:4 * k], np.cos(f), atol=1e-5)


def _reference_forward(sd: dict[str, torch.Tensor], pixels: torch.Tensor, time: torch.Tensor,
                       latlon: torch.Tensor, gsd: float, waves: torch.Tensor, heads: int) -> torch.Tensor:
    """Clay's encoder as plain functions of the state dict, written from clay-v1.md (no shared code)."""
    g = "patch_embedding.weight_generator."
    j = torch.arange(64, dtype=torch.float64)
    w = waves.double()[:, None] * (10000.0 ** (-j / 63))[None]
    code = torch.cat([w.sin(), w.cos()], 1).float()
    fc = "patch_embedding.fclayer."
    code = code + F.gelu(F.linear(F.gelu(F.linear(code, sd[fc + "l1.weight"], sd[fc + "l1.bias"])),
                                  sd[fc + "l2.weight"], sd[fc + "l2.bias"]))
    seq = torch.cat([sd[g + "weight_tokens"], code, sd[g + "bias_token"]])
    el = g + "encoder.layers.0."
    att, _ = F.multi_head_attention_forward(
        seq[:, None], seq[:, None], seq[:, None], 128, 4, sd[el + "self_attn.in_proj_weight"],
        sd[el + "self_attn.in_proj_bias"], None, None, False, 0.0, sd[el + "self_attn.out_proj.weight"],
        sd[el + "self_attn.out_proj.bias"], training=False, need_weights=False)
    h = F.layer_norm(seq + att[:, 0], (128,), sd[el + "norm1.weight"], sd[el + "norm1.bias"])
    ff = F.linear(F.gelu(F.linear(h, sd[el + "linear1.weight"], sd[el + "linear1.bias"])),
                  sd[el + "linear2.weight"], sd[el + "linear2.bias"])
    h = F.layer_norm(h + ff, (128,), sd[el + "norm2.weight"], sd[el + "norm2.bias"])
    c = waves.shape[0]
    kern = F.linear(h[128:128 + c] + seq[128:128 + c], sd[g + "fc_weight.weight"], sd[g + "fc_weight.bias"])
    bias = F.linear(h[-1], sd[g + "fc_bias.weight"], sd[g + "fc_bias.bias"])
    dim = bias.shape[0]
    weight = kern.reshape(c, dim, 8, 8).permute(1, 0, 2, 3) * 0.02
    x = F.conv2d(pixels, weight, bias, stride=8).flatten(2).transpose(1, 2)
    n = int(math.isqrt(x.shape[1]))
    p, k = dim - 8, (dim - 8) // 4
    freqs = torch.tensor([gsd * 10000 ** (-2 * (i / (k - 1)) / p) for i in range(k)])
    rr, cc = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    cx, ry = cc.flatten()[:, None] * freqs, rr.flatten()[:, None] * freqs
    pos = torch.cat([cx.sin(), cx.cos(), ry.sin(), ry.cos()], 1)
    enc = torch.cat([pos.expand(x.shape[0], -1, -1), torch.cat([time, latlon], 1)[:, None].expand(-1, n * n, -1)], 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x + enc], 1)
    i = 0
    while f"transformer.layers.{i}.0.norm.weight" in sd:
        t = f"transformer.layers.{i}."
        y = F.layer_norm(x, (dim,), sd[t + "0.norm.weight"], sd[t + "0.norm.bias"])
        q, kk, v = (z.unflatten(-1, (heads, -1)).transpose(1, 2) for z in F.linear(y, sd[t + "0.to_qkv.weight"]).chunk(3, -1))
        a = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
        x = x + F.linear(a.transpose(1, 2).flatten(2), sd[t + "0.to_out.weight"])
        y = F.layer_norm(x, (dim,), sd[t + "1.net.0.weight"], sd[t + "1.net.0.bias"])
        x = x + F.linear(F.gelu(F.linear(y, sd[t + "1.net.1.weight"], sd[t + "1.net.1.bias"])),
                         sd[t + "1.net.3.weight"], sd[t + "1.net.3.bias"])
        i += 1
    return F.layer_norm(x, (dim,), sd["transformer.norm.weight"], sd["transformer.norm.bias"])


def test_forward_matches_independent_reference_with_perturbed_norms() -> None:
    model = perturbed_tiny()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    pixels, waves = torch.randn(2, 5, 24, 24), torch.tensor([0.493, 0.56, 0.665, 0.842, 1.61])
    time, latlon = torch.rand(2, 4) * 2 - 1, torch.rand(2, 4) * 2 - 1
    with torch.inference_mode():
        ours = model(pixels, time, latlon, torch.tensor(10.0), waves)
        ref = _reference_forward(sd, pixels, time, latlon, 10.0, waves, heads=4)
    assert ours.shape == (2, 10, 72)
    assert (ours - ref).abs().max() < 1e-4
    # and gsd / metadata matter: the wrong gsd or swapped metadata moves the output
    with torch.inference_mode():
        assert (model(pixels, time, latlon, torch.tensor(20.0), waves) - ours).abs().max() > 1e-2
        assert (model(pixels, latlon, time, torch.tensor(10.0), waves) - ours).abs().max() > 1e-2


def test_forward_features_returns_listed_blocks() -> None:
    model = perturbed_tiny()
    torch.manual_seed(1)
    args = (torch.randn(1, 3, 16, 16), torch.zeros(1, 4), torch.zeros(1, 4), 10.0, torch.tensor([0.49, 0.56, 0.66]))
    with torch.inference_mode():
        out, feats = model.forward_features(*args, blocks=[1, 0])
        full = model(*args)
        last = model.transformer.norm(feats[0])
    assert torch.equal(out, full)
    assert [f.shape for f in feats] == [torch.Size([1, 5, 72])] * 2
    assert torch.allclose(last, full, atol=1e-6)  # block 1 (the last) + final LN == output
    assert not torch.allclose(feats[1], feats[0])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_features(*args, blocks=[2])


def test_non_square_input_is_rejected() -> None:
    model = ClayEncoder(**TINY).eval()
    with pytest.raises(ValueError, match="square"):
        model(torch.zeros(1, 3, 16, 24), torch.zeros(1, 4), torch.zeros(1, 4), 10.0, torch.tensor([0.4, 0.5, 0.6]))
