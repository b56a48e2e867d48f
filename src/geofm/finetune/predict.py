"""Class maps from a trained model: Cloud-Optimized GeoTIFFs in the source CRS with the class table as
colour map (and optionally per-class probabilities).

Inputs are one or more rasters on one grid (chips of a scene, or a whole scene): they are mosaicked onto
their union, cut into overlapping tiles, and each tile's class probabilities are blended with a weight that
falls off linearly towards the tile edge, so chip seams don't show. Pixels with no data in any band get the
ignore id (the COG's nodata).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geofm import storage
from geofm.errors import InputError
from geofm.finetune.config import SegmentationConfig
from geofm.finetune.data import RasterInfo, expand_images, model_bands, normalise, raster_info, read_window
from geofm.finetune.module import SegmentationModule
from geofm.models.spec import get_model_spec
from geofm.sentinel2 import band


@dataclass
class Prediction:
    """A class map (uint8 [H, W]), optional probabilities (float32 [K, H, W]) and their grid."""

    classes: np.ndarray
    probabilities: np.ndarray | None
    crs: CRS
    transform: Affine


def tile_weight(size: int) -> np.ndarray:
    """[size, size] blending weight: a tent falling linearly to the tile edge (never 0)."""
    ramp = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (size / 2)
    return np.outer(ramp, ramp).astype(np.float32)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``length`` with the last tile flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _band_indices(info: RasterInfo, wanted: Sequence[str]) -> list[int]:
    """Raster band index of each of the model's bands (matched by name or ESA id)."""
    have = {b.name: i for i, b in model_bands(info.band_names)}
    missing = [w for w in wanted if band(w).name not in have]
    if missing:
        raise InputError(f"{info.path}: bands {missing} the model was trained on are missing")
    return [have[band(w).name] for w in wanted]


def mosaic(infos: Sequence[RasterInfo], bands: Sequence[str]) -> tuple[np.ndarray, Affine, CRS]:
    """Rasters of one CRS and resolution pasted onto their union grid: ([C, H, W] with NaN gaps, grid)."""
    first = infos[0]
    res_x, res_y = first.transform.a, first.transform.e
    for info in infos[1:]:
        if (
            info.crs != first.crs
            or not np.isclose(info.transform.a, res_x)
            or not np.isclose(info.transform.e, res_y)
        ):
            raise InputError(
                f"{info.path}: CRS/resolution differ from {first.path}; predict one grid at a time"
            )
    lefts = [i.transform.c for i in infos]
    tops = [i.transform.f for i in infos]
    left, top = min(lefts), max(tops)
    cols = [round((i.transform.c - left) / res_x) for i in infos]
    rows = [round((i.transform.f - top) / res_y) for i in infos]
    width = max(c + i.width for c, i in zip(cols, infos, strict=True))
    height = max(r + i.height for r, i in zip(rows, infos, strict=True))
    out = np.full((len(bands), height, width), np.nan, np.float32)
    for info, r, c in zip(infos, rows, cols, strict=True):
        data = read_window(info, Window(0, 0, info.width, info.height), _band_indices(info, bands))
        target = out[:, r : r + info.height, c : c + info.width]
        np.copyto(target, data, where=np.isfinite(data))
    return out, Affine(res_x, 0, left, 0, res_y, top), first.crs


@torch.no_grad()
def predict_array(
    module: SegmentationModule,
    raw: np.ndarray,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    with_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class ids uint8 [H, W] (and probabilities [K, H, W]) of a raw raster [C, H, W] in model bands."""
    cfg = module.cfg
    tile = tile or cfg.chip_size
    overlap = tile // 2 if overlap is None else overlap
    patch = get_model_spec(cfg.model).patch_size
    if tile % patch or not 0 <= overlap < tile:
        raise InputError(f"tile {tile} must be a multiple of the patch size {patch} and overlap {overlap} "
                         "in 0..tile-1")
    _, h, w = raw.shape
    nodata = ~np.isfinite(raw).any(0)
    bands = [band(b) for b in module.bands]
    pad_h, pad_w = max(tile - h, 0), max(tile - w, 0)
    x = normalise(raw, bands, cfg.value_scale)
    if pad_h or pad_w:
        x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)))
    hh, ww = x.shape[1:]
    k = cfg.num_classes
    acc = np.zeros((k, hh, ww), np.float32)
    weight_sum = np.zeros((hh, ww), np.float32)
    weight = tile_weight(tile)
    stride = tile - overlap
    origins = [(r, c) for r in tile_starts(hh, tile, stride) for c in tile_starts(ww, tile, stride)]
    device = next(module.parameters()).device
    module.eval()
    for i in range(0, len(origins), batch_size):
        batch = origins[i : i + batch_size]
        pixels = torch.from_numpy(np.stack([x[:, r : r + tile, c : c + tile] for r, c in batch])).to(device)
        probs = module.mask_ignore(module(pixels)).float().softmax(1).cpu().numpy()
        for (r, c), p in zip(batch, probs, strict=True):
            acc[:, r : r + tile, c : c + tile] += p * weight
            weight_sum[r : r + tile, c : c + tile] += weight
    acc = acc[:, :h, :w] / weight_sum[None, :h, :w]
    classes = acc.argmax(0).astype(np.uint8)
    classes[nodata] = cfg.ignore_id
    if with_probabilities:
        acc[:, nodata] = np.nan
    return classes, (acc if with_probabilities else None)


def predict_rasters(
    module: SegmentationModule,
    sources: Sequence[str],
    out: str | None = None,
    probabilities_out: str | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
) -> Prediction:
    """Predict rasters (files, folders or globs) of one grid into one class map; write COGs when asked."""
    paths = expand_images(sources)
    infos = [raster_info(p, module.cfg.bands) for p in paths]
    raw, transform, crs = mosaic(infos, module.bands)
    classes, probs = predict_array(module, raw, tile, overlap, batch_size, probabilities_out is not None)
    result = Prediction(classes, probs, crs, transform)
    if out:
        write_class_cog(result, module.cfg, out)
    if probabilities_out and probs is not None:
        write_probability_cog(result, module.cfg, probabilities_out)
    return result


def write_class_cog(pred: Prediction, cfg: SegmentationConfig, url: str) -> None:
    """uint8 class COG, nodata = ignore id, class table as colour map and in the tags; DEFLATE, tiled,
    nearest-neighbour overviews. No predictor: class ids are categories, and differencing them (predictor
    2) made class maps 16-30 % larger here (BENCHMARKS.md, "Prediction COGs")."""
    h, w = pred.classes.shape
    profile = dict(
        driver="COG",
        width=w,
        height=h,
        count=1,
        dtype="uint8",
        crs=pred.crs,
        transform=pred.transform,
        nodata=cfg.ignore_id,
        compress="deflate",
        blocksize=_blocksize(h, w),
        overview_resampling="nearest",
    )
    with storage.local_file_for_write(url, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(pred.classes, 1)
        dst.write_colormap(1, cfg.colormap())
        dst.set_band_description(1, "class")
        dst.update_tags(classes=",".join(f"{c.id}:{c.name}" for c in cfg.classes), ignore_id=cfg.ignore_id)


def write_probability_cog(pred: Prediction, cfg: SegmentationConfig, url: str) -> None:
    """float32 COG, one band per class id (band i+1 = class id i), named by class; NaN where no data;
    DEFLATE with the floating-point predictor (3), tiled, averaged overviews."""
    assert pred.probabilities is not None
    k, h, w = pred.probabilities.shape
    profile = dict(
        driver="COG",
        width=w,
        height=h,
        count=k,
        dtype="float32",
        crs=pred.crs,
        transform=pred.transform,
        nodata=float("nan"),
        compress="deflate",
        predictor="FLOATING_POINT",  # 3: byte-wise differencing of floats
        blocksize=_blocksize(h, w),
        overview_resampling="average",
    )
    with storage.local_file_for_write(url, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(pred.probabilities.astype(np.float32))
        for i, name in enumerate(cfg.class_names):
            dst.set_band_description(i + 1, name)


def _blocksize(h: int, w: int) -> int:
    return 512 if min(h, w) >= 512 else 256
