"""Training data for segmentation: image rasters cut into chips, labels put on each chip's exact grid,
spatial splits and flip/rotate augmentations.

Images are GeoTIFFs (band names from the descriptions or the config) or step-1 NetCDF chips
(docs/formats.md). Bands are mapped to Clay by name/wavelength through ``geofm.sentinel2``; bands without
Clay statistics (B01, B09, B10) are left out. Labels are a raster in any CRS (reprojected nearest onto each
chip) or polygons with a class attribute (rasterised onto each chip).
"""

from __future__ import annotations

import glob
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from torch.utils.data import Dataset

from geofm.errors import InputError, NotFoundError
from geofm.finetune.config import SegmentationConfig
from geofm.models import registry
from geofm.sentinel2 import BANDS_BY_ID, BANDS_BY_NAME, Band

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".parquet", ".geoparquet")


# ---- image rasters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterInfo:
    """Grid and bands of one image raster (GeoTIFF or NetCDF chip)."""

    path: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    band_names: tuple[str, ...]
    datetime: datetime | None = None

    @property
    def is_netcdf(self) -> bool:
        return self.path.lower().endswith(NETCDF_SUFFIXES)

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)


def expand_images(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, folders (their .tif/.nc files) or glob patterns; none found is an error."""
    out: list[str] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            suffixes = (".tif", ".tiff", *NETCDF_SUFFIXES)
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in suffixes)
        elif any(ch in pat for ch in "*?["):
            found = sorted(glob.glob(pat, recursive=True))
        else:
            if not p.is_file():
                raise NotFoundError(f"image raster not found: {pat}")
            found = [pat]
        if not found:
            raise NotFoundError(f"no image rasters match {pat!r}")
        out.extend(found)
    return list(dict.fromkeys(out))


def raster_info(path: str, bands: Sequence[str] | None = None) -> RasterInfo:
    """Read the grid, band names and date of a raster; a raster we can't use raises naming it."""
    if path.lower().endswith(NETCDF_SUFFIXES):
        return _netcdf_info(path)
    try:
        src = rasterio.open(path)
    except rasterio.RasterioIOError as exc:
        raise InputError(f"{path}: not a readable raster ({exc})") from exc
    with src:
        if src.crs is None:
            raise InputError(f"{path}: raster has no CRS")
        names = tuple(bands) if bands else tuple(d or "" for d in src.descriptions)
        if len(names) != src.count or not all(names):
            raise InputError(
                f"{path}: {src.count} bands but band names {list(names)}; set `bands` in the config"
            )
        stamp = src.tags().get("datetime") or src.tags().get("TIFFTAG_DATETIME")
        return RasterInfo(path, src.crs, src.transform, src.width, src.height, names, _parse_time(stamp))


def _netcdf_info(path: str) -> RasterInfo:
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        x = ds["x"].values
        y = ds["y"].values
        if len(x) < 2 or len(y) < 2:
            raise InputError(f"{path}: NetCDF chip has fewer than 2 pixels along x or y")
        rx, ry = float(x[1] - x[0]), float(y[1] - y[0])
        transform = Affine(rx, 0, float(x[0]) - rx / 2, 0, ry, float(y[0]) - ry / 2)
        crs_text = ds.attrs.get("crs") or ds["spatial_ref"].attrs.get("crs_wkt")
        if not crs_text:
            raise InputError(f"{path}: NetCDF chip has no crs attribute nor spatial_ref")
        names = ds.attrs.get("bands")
        if names is None:
            names = [v for v in ds.data_vars if v in BANDS_BY_NAME]
        names = [names] if isinstance(names, str) else list(names)
        return RasterInfo(path, CRS.from_user_input(crs_text), transform, len(x), len(y), tuple(names),
                          _parse_time(ds.attrs.get("datetime")))


def _parse_time(value: object) -> datetime | None:
    if not value:
        return None
    text = str(value)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    try:
        return datetime.strptime(text, "%Y:%m:%d %H:%M:%S")  # TIFF DateTime tag
    except ValueError:
        return None


def model_bands(names: Sequence[str]) -> list[tuple[int, Band]]:
    """(index in the raster, band) for every raster band Clay has statistics for, in raster order."""
    out = []
    for i, name in enumerate(names):
        b = BANDS_BY_NAME.get(name) or BANDS_BY_ID.get(name.upper())
        if b is not None and b.clay_mean is not None and b.clay_std is not None:
            out.append((i, b))
    if not out:
        raise InputError(f"none of the bands {list(names)} has Clay statistics; name them (e.g. B02 or blue)")
    return out


def read_window(info: RasterInfo, window: Window, indices: Sequence[int]) -> np.ndarray:
    """Pixels [C, h, w] float32 of the listed band indices; nodata as NaN."""
    if info.is_netcdf:
        import xarray as xr

        r0, c0 = int(window.row_off), int(window.col_off)
        with xr.open_dataset(info.path, engine="h5netcdf") as ds:
            arrays = [
                ds[info.band_names[i]].values[r0:r0 + int(window.height), c0:c0 + int(window.width)]
                for i in indices
            ]
        return np.stack(arrays).astype(np.float32)
    with rasterio.open(info.path) as src:
        data = src.read([i + 1 for i in indices], window=window, boundless=True, fill_value=np.nan
                        if src.dtypes[0].startswith("float") else 0).astype(np.float32)
        if src.nodata is not None and not math.isnan(src.nodata):
            data[data == src.nodata] = np.nan
    return data


def normalise(pixels: np.ndarray, bands: Sequence[Band], value_scale: float = 1.0) -> np.ndarray:
    """Clay input [C,H,W]: DN = pixels x value_scale, then Clay's per-band normalisation (the registry's,
    one place); NaN (nodata) becomes 0, the band mean."""
    return registry.normalise(pixels[None] * value_scale, [b.name for b in bands])[0]


# ---- chips ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChipRef:
    """One square window of an image raster: where it lies in the raster and in the world."""

    path: str
    row_off: int
    col_off: int
    size: int
    crs: str
    transform: tuple[float, float, float, float, float, float]
    datetime: datetime | None = None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def window(self) -> Window:
        return Window(self.col_off, self.row_off, self.size, self.size)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a = self.affine
        x0, y0 = a.c, a.f
        x1, y1 = a @ (self.size, self.size)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    @property
    def location(self) -> str:
        """Same for every date of one footprint: CRS and upper-left corner (metres, rounded)."""
        return f"{self.crs}:{self.transform[2]:.0f}:{self.transform[5]:.0f}"


def tile_chips(info: RasterInfo, chip_size: int) -> list[ChipRef]:
    """Whole chips on a grid anchored at the raster's upper-left corner (edge remainders dropped)."""
    if info.width < chip_size or info.height < chip_size:
        raise InputError(
            f"{info.path}: raster {info.width}x{info.height} is smaller than chip_size {chip_size}"
        )
    crs = info.crs.to_string()
    chips = []
    for r in range(0, info.height - chip_size + 1, chip_size):
        for c in range(0, info.width - chip_size + 1, chip_size):
            t = info.transform @ Affine.translation(c, r)
            chips.append(ChipRef(info.path, r, c, chip_size, crs, tuple(t)[:6], info.datetime))
    return chips


# ---- labels ---------------------------------------------------------------------------------------
class LabelSource:
    """Labels as a raster (any CRS) or polygons; ``for_chip`` gives the label grid of one chip."""

    def __init__(self, path: str, cfg: SegmentationConfig) -> None:
        self.path = path
        self.ignore_id = cfg.ignore_id
        self.valid_ids = {c.id for c in cfg.classes} | {cfg.ignore_id}
        self.is_vector = path.lower().endswith(VECTOR_SUFFIXES)
        if not Path(path).exists() and "://" not in path:
            raise NotFoundError(f"labels not found: {path}")
        if self.is_vector:
            self.gdf = _read_vector_labels(path, cfg)
        else:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise InputError(f"{path}: label raster has no CRS")
                self.src_crs, self.src_transform, self.src_nodata = src.crs, src.transform, src.nodata
                self.array = src.read(1)
            bad = set(np.unique(self.array).tolist()) - self.valid_ids
            if self.src_nodata is not None:
                bad.discard(int(self.src_nodata))
            if bad:
                raise InputError(
                    f"{path}: label ids {sorted(bad)} are not in the class table {sorted(self.valid_ids)}"
                )

    def for_chip(self, chip: ChipRef) -> np.ndarray:
        """uint8 [size, size] class ids on the chip's grid; outside the labels = ignore id."""
        shape = (chip.size, chip.size)
        if self.is_vector:
            return self._rasterise(chip, shape)
        out = np.full(shape, self.ignore_id, np.uint8)
        reproject(
            source=self.array, destination=out, src_transform=self.src_transform, src_crs=self.src_crs,
            src_nodata=self.src_nodata, dst_transform=chip.affine, dst_crs=CRS.from_user_input(chip.crs),
            dst_nodata=self.ignore_id, resampling=Resampling.nearest,
        )
        return out

    def _rasterise(self, chip: ChipRef, shape: tuple[int, int]) -> np.ndarray:
        gdf = self.gdf.to_crs(chip.crs)
        x0, y0, x1, y1 = chip.bounds
        gdf = gdf.cx[x0:x1, y0:y1]
        if gdf.empty:
            return np.full(shape, self.ignore_id, np.uint8)
        shapes = list(zip(gdf.geometry, gdf["_class_id"].astype(int), strict=True))
        return rasterize(shapes, out_shape=shape, transform=chip.affine, fill=self.ignore_id, dtype="uint8")


def _read_vector_labels(path: str, cfg: SegmentationConfig):  # -> GeoDataFrame
    import geopandas as gpd

    is_parquet = path.lower().endswith((".parquet", ".geoparquet"))
    gdf = gpd.read_parquet(path) if is_parquet else gpd.read_file(path)
    if gdf.crs is None:
        raise InputError(f"{path}: vector labels have no CRS")
    if cfg.label_attribute not in gdf.columns:
        raise InputError(
            f"{path}: no column {cfg.label_attribute!r} (label_attribute); columns: {list(gdf.columns)}"
        )
    by_name = {c.name.lower(): c.id for c in cfg.classes}
    valid = {c.id for c in cfg.classes}
    ids = []
    for value in gdf[cfg.label_attribute]:
        if isinstance(value, str) and not value.strip().isdigit():
            cid = by_name.get(value.strip().lower())
        else:
            cid = int(value) if int(value) in valid else None
        if cid is None:
            raise InputError(
                f"{path}: class {value!r} in column {cfg.label_attribute!r} is not in the class table"
            )
        ids.append(cid)
    gdf = gdf[[gdf.geometry.name]].copy()
    gdf["_class_id"] = ids
    return gdf


# ---- spatial split --------------------------------------------------------------------------------
def spatial_split(
    chips: Sequence[ChipRef], block_chips: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[ChipRef]]:
    """Split by space: chips whose footprints overlap form one group, groups fall into square blocks of
    ``block_chips`` chips (by their first chip's centre), blocks are shuffled with ``seed`` and dealt to
    test, val and train. Every date of a place goes to the same side; checked by ``assert_disjoint``."""
    groups = _overlap_groups(chips)
    blocks: dict[tuple[str, int, int], list[int]] = {}
    for members in groups:
        first = chips[members[0]]
        side = block_chips * first.size * abs(first.transform[0])
        x0, y0, x1, y1 = first.bounds
        key = (first.crs, math.floor((x0 + x1) / 2 / side), math.floor((y0 + y1) / 2 / side))
        blocks.setdefault(key, []).extend(members)
    keys = sorted(blocks)
    random.Random(seed).shuffle(keys)
    n = len(keys)

    def count(frac: float) -> int:
        return 0 if frac <= 0 else max(1, round(frac * n))

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= n:
        raise InputError(
            f"{n} spatial blocks cannot be split into train/val/test ({n_val} val, {n_test} test blocks "
            f"asked); lower split_block_chips or add images"
        )
    parts = {"test": keys[:n_test], "val": keys[n_test:n_test + n_val], "train": keys[n_test + n_val:]}
    out = {name: [chips[i] for k in ks for i in sorted(blocks[k])] for name, ks in parts.items()}
    assert_disjoint(out)
    return out


def _overlap_groups(chips: Sequence[ChipRef]) -> list[list[int]]:
    """Connected components of 'footprints overlap' (same CRS, positive shared area)."""
    parent = list(range(len(chips)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_crs: dict[str, list[int]] = {}
    for i, c in enumerate(chips):
        by_crs.setdefault(c.crs, []).append(i)
    for idx in by_crs.values():
        b = np.array([chips[i].bounds for i in idx])
        for a_pos, i in enumerate(idx):
            me = b[a_pos]
            ov = (b[:, 0] < me[2]) & (b[:, 2] > me[0]) & (b[:, 1] < me[3]) & (b[:, 3] > me[1])
            for j_pos in np.nonzero(ov)[0]:
                ri, rj = find(i), find(idx[j_pos])
                if ri != rj:
                    parent[rj] = ri
    groups: dict[int, list[int]] = {}
    for i in range(len(chips)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def assert_disjoint(splits: dict[str, list[ChipRef]]) -> None:
    """Raise if any chip, or any overlapping footprint, sits on two sides of the split."""
    names = list(splits)
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            same = {c.location for c in splits[a]} & {c.location for c in splits[b]}
            if same:
                raise AssertionError(f"chips on both sides of the split ({a}/{b}): {sorted(same)[:3]}")
            for ca in splits[a]:
                for cb in splits[b]:
                    if ca.crs == cb.crs and _overlap(ca.bounds, cb.bounds):
                        raise AssertionError(f"overlapping chips on both sides ({a}/{b}): {ca} and {cb}")


def _overlap(p: tuple[float, ...], q: tuple[float, ...]) -> bool:
    return p[0] < q[2] and p[2] > q[0] and p[1] < q[3] and p[3] > q[1]


# ---- model inputs ---------------------------------------------------------------------------------
def chip_metadata(chip: ChipRef) -> np.ndarray:
    """Clay's 8 metadata channels for a chip: its date (zeros when unknown) and centre lat/lon."""
    lon0, lat0, lon1, lat1 = transform_bounds(chip.crs, "EPSG:4326", *chip.bounds)
    when = chip.datetime or datetime(2000, 1, 1)
    meta = registry.time_latlon([when], [(lat0 + lat1) / 2], [(lon0 + lon1) / 2])[0]
    if chip.datetime is None:
        meta[:4] = 0.0
    return meta


@dataclass
class ChipSet:
    """Chips loaded into memory: normalised pixels, labels and the model's side inputs."""

    chips: list[ChipRef]
    pixels: np.ndarray  # [N, C, S, S] float32, normalised
    labels: np.ndarray  # [N, S, S] int64
    time: np.ndarray  # [N, 4]
    latlon: np.ndarray  # [N, 4]
    bands: list[Band] = field(default_factory=list)

    @property
    def waves(self) -> list[float]:
        return [b.wavelength for b in self.bands]


def load_chips(chips: Sequence[ChipRef], infos: dict[str, RasterInfo], labels: LabelSource,
               cfg: SegmentationConfig) -> ChipSet:
    """Read, normalise and label every chip (one band set for all, checked)."""
    pixels, ys, times, latlons = [], [], [], []
    band_set: list[Band] | None = None
    for chip in chips:
        info = infos[chip.path]
        selected = model_bands(info.band_names)
        bands = [b for _, b in selected]
        if band_set is None:
            band_set = bands
        elif [b.name for b in bands] != [b.name for b in band_set]:
            raise InputError(f"{chip.path}: bands {[b.name for b in bands]} differ from the other images'")
        raw = read_window(info, chip.window, [i for i, _ in selected])
        pixels.append(normalise(raw, bands, cfg.value_scale))
        ys.append(labels.for_chip(chip).astype(np.int64))
        meta = chip_metadata(chip) if cfg.metadata == "chip" else np.zeros(8, np.float32)
        times.append(meta[:4])
        latlons.append(meta[4:])
    s = cfg.chip_size
    n_bands = len(band_set or [])
    return ChipSet(
        list(chips),
        np.stack(pixels) if pixels else np.zeros((0, n_bands, s, s), np.float32),
        np.stack(ys) if ys else np.zeros((0, s, s), np.int64),
        np.stack(times) if times else np.zeros((0, 4), np.float32),
        np.stack(latlons) if latlons else np.zeros((0, 4), np.float32),
        band_set or [],
    )


@dataclass
class PreparedData:
    """Everything the trainer needs: the three chip sets and the shared model inputs."""

    splits: dict[str, ChipSet]
    bands: list[Band]
    gsd: float


def prepare_data(cfg: SegmentationConfig) -> PreparedData:
    """Images -> chips -> spatial split -> loaded chip sets (labels checked up front)."""
    paths = expand_images(cfg.images)
    infos = {p: raster_info(p, cfg.bands) for p in paths}
    labels = LabelSource(cfg.labels, cfg)
    chips = [c for info in infos.values() for c in tile_chips(info, cfg.chip_size)]
    parts = spatial_split(chips, cfg.split_block_chips, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    sets = {name: load_chips(cs, infos, labels, cfg) for name, cs in parts.items()}
    bands = next(s.bands for s in sets.values() if s.bands)
    gsd = cfg.gsd or float(np.median([i.resolution for i in infos.values()]))
    if not (sets["train"].labels != cfg.ignore_id).any():
        raise InputError(f"{cfg.labels}: no labelled pixel falls on the training chips")
    return PreparedData(sets, bands, gsd)


# ---- torch dataset --------------------------------------------------------------------------------
def augment(
    pixels: torch.Tensor, label: torch.Tensor, k: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by k x 90 degrees and optionally flip left-right, image [C,H,W] and label [H,W] alike."""
    pixels, label = torch.rot90(pixels, k, (-2, -1)), torch.rot90(label, k, (-2, -1))
    if flip:
        pixels, label = torch.flip(pixels, (-1,)), torch.flip(label, (-1,))
    return pixels.contiguous(), label.contiguous()


class SegmentationDataset(Dataset):
    """Items ``{"pixels", "label", "time", "latlon"}`` from a ChipSet, optionally augmented."""

    def __init__(self, data: ChipSet, train_augment: bool = False) -> None:
        self.data = data
        self.train_augment = train_augment

    def __len__(self) -> int:
        return len(self.data.chips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(self.data.pixels[i])
        label = torch.from_numpy(self.data.labels[i])
        if self.train_augment:
            k = int(torch.randint(0, 4, ()).item())
            flip = bool(torch.randint(0, 2, ()).item())
            pixels, label = augment(pixels, label, k, flip)
        return {"pixels": pixels, "label": label, "time": torch.from_numpy(self.data.time[i]),
                "latlon": torch.from_numpy(self.data.latlon[i])}
