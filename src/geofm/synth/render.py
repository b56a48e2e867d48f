"""The synthetic landscape and sky: land cover, per-date reflectance, clouds, shadows, SCL.

Every random field is drawn once on a coarse grid and sampled bilinearly at pixel positions, so the
scene can be rendered strip by strip (a full 109.8 km tile never sits in memory) and the strips join
seamlessly. Everything is a pure function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from scipy.stats import norm

from geofm.indices import normalized_difference
from geofm.synth import spectra as sp

WEDGE_SHARE = 0.3  # nodata swath-edge wedge: pixels with x/E + y_from_bottom/E below this
SKY_SHARES = {"clear": (0.0, 0.0), "light": (0.10, 0.06), "heavy": (0.70, 0.08)}  # cloud, cirrus
SHADOW_SHIFT_PX = (-18, -24)  # clouds cast shadows 180 m north, 240 m west (morning sun from SE)


@dataclass(frozen=True)
class PlantedChange:
    """A planted land-cover change on the 10 m grid: ``rows``/``cols`` are [start, stop) pixels."""

    kind: str  # forest_cleared | new_water
    start_date: date
    from_class: int
    to_class: int
    rows: tuple[int, int]
    cols: tuple[int, int]


@dataclass(frozen=True)
class SkyPlan:
    """The sky on one date: ``kind`` clear/light/heavy and the planted cloud and cirrus shares."""

    day: date
    kind: str
    cloud_share: float
    cirrus_share: float


def sky_plans(dates: list[date]) -> list[SkyPlan]:
    """Clouds by date position: first and last clear, 2nd light, 3rd heavy, then light/clear turns."""
    kinds = []
    n = len(dates)
    for i in range(n):
        if i == 0 or (i == n - 1 and n >= 2):
            kinds.append("clear")
        elif i == 2 and n >= 4:
            kinds.append("heavy")
        else:
            kinds.append("light" if i % 2 == 0 or i == 1 else "clear")
    return [SkyPlan(d, k, *SKY_SHARES[k]) for d, k in zip(dates, kinds, strict=True)]


class SmoothField:
    """A smooth standard-normal random field on a coarse grid (``cell`` px), sampled bilinearly."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, cell: float, sigma: float = 1.2):
        self.cell = float(cell)
        gh, gw = int(height / cell) + 4, int(width / cell) + 4
        g = gaussian_filter(rng.standard_normal((gh, gw)), sigma, mode="reflect")
        self.grid = ((g - g.mean()) / (g.std() + 1e-9)).astype(np.float32)

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values at pixel centres ``rows`` x ``cols`` (1-D float arrays) -> [len(rows), len(cols)]."""
        def weights(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            p = np.clip(pos / self.cell, 0, n - 1.001)
            i = np.floor(p).astype(np.int64)
            return i, (p - i).astype(np.float32)

        i, t = weights(rows + 0.5, self.grid.shape[0])
        a = self.grid[i] * (1 - t)[:, None] + self.grid[i + 1] * t[:, None]
        j, u = weights(cols + 0.5, self.grid.shape[1])
        return a[:, j] * (1 - u)[None, :] + a[:, j + 1] * u[None, :]


@dataclass
class Strip:
    """One rendered strip of 10 m rows [r0, r1) over the padded width, for one date."""

    reflectance: np.ndarray  # float32 [12, h, w], surface + atmosphere (0..1)
    surface: np.ndarray  # float32 [12, h, w], reflectance before clouds
    cloud: np.ndarray  # float32 [h, w] cloud opacity 0..1
    cirrus: np.ndarray  # float32 [h, w] 0..1
    shadow: np.ndarray  # float32 [h, w] 0..1
    landcover: np.ndarray  # uint8 [h, w] on that date (changes applied)


class Landscape:
    """Land-cover patches, textures and per-date skies over a padded 10 m grid of ``height x width``."""

    def __init__(self, height: int, width: int, plans: list[SkyPlan], changes: list[PlantedChange],
                 seed: int, patch_px: float = 40.0, scenario: sp.Scenario = sp.SCENARIOS["default"]):
        self.height, self.width = height, width
        self.plans, self.changes, self.seed, self.scenario = plans, changes, seed, scenario
        rng = np.random.default_rng([seed, 20231])
        n_patches = max(8, int(height * width / patch_px**2))
        self.seeds = rng.uniform(0, 1, (n_patches, 2)) * [height, width]
        ids = list(scenario.patch_weights)
        probs = np.asarray([scenario.patch_weights[i] for i in ids])
        classes = rng.choice(ids, size=n_patches, p=probs / probs.sum())
        classes[: len(ids)] = ids  # every class occurs at least once
        self.patch_class = classes.astype(np.uint8)
        self.patch_brightness = rng.normal(0, 1, n_patches).astype(np.float32)
        self.patch_phase = rng.uniform(-25, 25, n_patches).astype(np.float32)  # crop sowing offsets
        self.tree = cKDTree(self.seeds)
        self.warp_r = SmoothField(rng, height, width, 16)
        self.warp_c = SmoothField(rng, height, width, 16)
        self.texture = SmoothField(rng, height, width, 3, sigma=0.8)
        self.skies = [
            (SmoothField(rng, height, width, 22, 1.5), SmoothField(rng, height, width, 40, 1.5),
             SmoothField(rng, height, width, 4, 1.0))
            for _ in plans
        ]

    def crop_year(self, year: int) -> tuple[np.ndarray, np.ndarray]:
        """Per crop field, this year's sowing shift (days) and peak green fraction (its own random
        stream per seed and year, so the other draws stay as they were)."""
        n = len(self.patch_phase)
        sc = self.scenario
        if sc.sowing_shift_days == 0 and sc.peak_spread == 0:
            return np.zeros(n, np.float32), np.ones(n, np.float32)
        rng = np.random.default_rng([self.seed, 20232, year])
        shift = rng.normal(0, sc.sowing_shift_days, n).astype(np.float32)
        peak = np.clip(1 + rng.normal(0, sc.peak_spread, n), 0.5, 1.0).astype(np.float32)
        return shift, peak

    # ---- land cover ------------------------------------------------------------------------
    def patches(self, r0: int, r1: int) -> np.ndarray:
        """Patch index of every pixel of rows [r0, r1): nearest seed in a warped (organic) plane."""
        rows = np.arange(r0, r1, dtype=np.float32)
        cols = np.arange(self.width, dtype=np.float32)
        rr = rows[:, None] + 12.0 * self.warp_r.sample(rows, cols)
        cc = cols[None, :] + 12.0 * self.warp_c.sample(rows, cols)
        _, idx = self.tree.query(np.stack([rr.ravel(), cc.ravel()], axis=1), k=1)
        return idx.reshape(rr.shape).astype(np.int32)

    def base_landcover(self, r0: int, patches: np.ndarray) -> np.ndarray:
        """Land cover before any planted change; planted areas hold their 'before' class."""
        lc = self.patch_class[patches]
        for ch in self.changes:
            self._paint(lc, r0, ch, ch.from_class)
        return lc

    def landcover_on(self, base: np.ndarray, r0: int, day: date) -> np.ndarray:
        lc = base.copy()
        for ch in self.changes:
            if day >= ch.start_date:
                self._paint(lc, r0, ch, ch.to_class)
        return lc

    @staticmethod
    def _paint(lc: np.ndarray, r0: int, ch: PlantedChange, value: int) -> None:
        a, b = max(ch.rows[0] - r0, 0), min(ch.rows[1] - r0, lc.shape[0])
        if a < b:
            lc[a:b, ch.cols[0]:ch.cols[1]] = value

    # ---- one date --------------------------------------------------------------------------
    def render(self, r0: int, r1: int, index: int, patches: np.ndarray, base: np.ndarray) -> Strip:
        plan = self.plans[index]
        day = plan.day
        lc = self.landcover_on(base, r0, day)
        rows = np.arange(r0, r1, dtype=np.float32)
        cols = np.arange(self.width, dtype=np.float32)

        table = np.zeros((len(sp.CLASSES), 12), np.float32)
        veg = np.zeros_like(table)  # green spectrum mixed in by the green fraction
        table[sp.FOREST.id] = sp.SPECTRA["forest"]
        table[sp.CROPLAND.id] = sp.SPECTRA["crop_soil"]
        veg[sp.CROPLAND.id] = sp.SPECTRA["crop_green"] - sp.SPECTRA["crop_soil"]
        table[sp.GRASSLAND.id] = sp.SPECTRA["crop_soil"]
        veg[sp.GRASSLAND.id] = sp.SPECTRA["grass"] - sp.SPECTRA["crop_soil"]
        table[sp.WATER.id] = sp.SPECTRA["water"]
        table[sp.URBAN.id] = sp.SPECTRA["urban"]
        table[sp.BARE.id] = sp.SPECTRA["bare"]

        green = np.zeros(lc.shape, np.float32)
        shift, peak = self.crop_year(day.year)
        crop_g = np.asarray([sp.crop_green_fraction(day, float(p + s), float(k))
                             for p, s, k in zip(self.patch_phase, shift, peak, strict=True)], np.float32)
        is_crop = lc == sp.CROPLAND.id
        green[is_crop] = crop_g[patches[is_crop]]
        green[lc == sp.GRASSLAND.id] = sp.grass_green_fraction(day)

        surf = table[lc] + veg[lc] * green[..., None]  # [h, w, 12]
        tex = self.texture.sample(rows, cols)
        amp = np.where(lc == sp.URBAN.id, 0.15, np.where(lc == sp.WATER.id, 0.02, 0.05)).astype(np.float32)
        rng = np.random.default_rng([self.seed, index, r0, 7])
        noise = rng.standard_normal(lc.shape, dtype=np.float32)
        factor = (1 + 0.05 * self.patch_brightness[patches]) * (1 + amp * tex) * (1 + 0.015 * noise)
        surf *= np.clip(factor, 0.5, 1.5)[..., None]
        surf = np.ascontiguousarray(surf.transpose(2, 0, 1))

        cloud_f, cirrus_f, detail_f = self.skies[index]
        cloud = np.zeros(lc.shape, np.float32)
        cirrus = np.zeros(lc.shape, np.float32)
        shadow = np.zeros(lc.shape, np.float32)
        refl = surf.copy()
        if plan.cloud_share > 0:
            t = float(norm.ppf(1 - plan.cloud_share))
            cloud = np.clip((cloud_f.sample(rows, cols) - t) / 0.5 + 0.5, 0, 1)
            dr, dc = SHADOW_SHIFT_PX
            caster = np.clip((cloud_f.sample(rows - dr, cols - dc) - t) / 0.5 + 0.5, 0, 1)
            shadow = np.clip(caster * 1.5, 0, 1) * (1 - cloud)
            ct = float(norm.ppf(1 - plan.cirrus_share))
            cirrus = np.clip((cirrus_f.sample(rows, cols) - ct) / 0.8 + 0.5, 0, 1)
            detail = 1 + 0.08 * detail_f.sample(rows, cols)
            refl *= (1 - 0.7 * shadow)[None]
            refl += sp.SPECTRA["cirrus"][:, None, None] * (1.5 * cirrus)[None]
            refl = refl * (1 - cloud)[None] + sp.SPECTRA["cloud"][:, None, None] * (cloud * detail)[None]
        return Strip(refl.astype(np.float32), surf, cloud, cirrus, shadow, lc)


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks of the last two axes (their sizes are multiples of k)."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // k, k, w // k, k).mean(axis=(-3, -1))


def scene_classes(strip: Strip, k: int = 2) -> np.ndarray:
    """SCL (without nodata) at the k-times coarser grid, consistent with what the pixels show."""
    cloud = block_mean(strip.cloud, k)
    cirrus = block_mean(strip.cirrus, k)
    shadow = block_mean(strip.shadow, k)
    s = block_mean(strip.surface[[2, 3, 7]], k)  # green, red, nir (ESA order B03 B04 B08)
    g, r, n = s[0], s[1], s[2]
    ndvi = normalized_difference(n, r)
    ndwi = normalized_difference(g, n)
    scl = np.where(ndwi > 0.2, 6, np.where(ndvi > 0.4, 4, 5)).astype(np.uint8)
    scl[shadow >= 0.3] = 3
    scl[cirrus >= 0.35] = 10
    scl[cloud >= 0.2] = 8
    scl[cloud >= 0.5] = 9
    return scl


def wedge_mask(rows: np.ndarray, n_cols: int, res: float, extent_m: float) -> np.ndarray:
    """True where a pixel centre (grid of ``res`` m, rows given) lies in the nodata swath-edge wedge."""
    yc = (rows + 0.5) * res
    xc = (np.arange(n_cols) + 0.5) * res
    return (xc[None, :] / extent_m + (extent_m - yc[:, None]) / extent_m) < WEDGE_SHARE
