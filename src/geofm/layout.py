"""Every artifact path of the seed layout (../shared/reference/seed-spec.md), one function each.

No other module formats a path. Paths are URLs: a local folder or ``s3://bucket/prefix``.
The layout follows the spec exactly, with two documented additions: embeddings sit under a
folder named after the model (so two models' outputs never mix), and run records, step markers
and the global PCA model live under ``output/<aoi>/runs/`` and ``processed-embeddings/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from geofm import storage
from geofm.errors import InputError
from geofm.sentinel2 import PROCESSING_LEVEL, parse_scene_id


def join(root: str, *parts: str) -> str:
    """Join URL or path parts with ``/`` (never the OS separator, so s3 and local agree)."""
    out = root.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def _is_absolute(url: str) -> bool:
    return "://" in url or url.startswith("/")


def _absolute(url: str) -> str:
    """``url`` with a local path made absolute and normalised (``./a/../b`` -> ``/cwd/b``)."""
    return url.rstrip("/") if "://" in url else os.path.abspath(url)


@dataclass(frozen=True)
class Layout:
    """Paths of one AOI's inputs and outputs under a root (local folder or ``s3://bucket/prefix``)."""

    root: str
    aoi_name: str
    level: str = PROCESSING_LEVEL

    # ---- input -------------------------------------------------------------------------------
    @property
    def input_dir(self) -> str:
        return join(self.root, "processing", self.aoi_name, "input")

    @property
    def scenes_dir(self) -> str:
        return join(self.input_dir, "sentinel2_scenes")

    SCENE_METADATA_SUFFIX = "_metadata.json"
    META_SUFFIX = "_chip_meta.parquet"
    PROCESSED_SUFFIX = "_processed_embeddings.parquet"

    def scene_metadata(self, scene_id: str) -> str:
        return join(self.scenes_dir, f"{scene_id}{self.SCENE_METADATA_SUFFIX}")

    @classmethod
    def scene_id_from_metadata(cls, url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[-1].removesuffix(cls.SCENE_METADATA_SUFFIX)

    def scene_ids(self) -> list[str]:
        """Scene ids whose STAC item is in the input layout, sorted."""
        return [self.scene_id_from_metadata(u) for u in storage.list_files(self.scenes_dir,
                                                                           self.SCENE_METADATA_SUFFIX)]

    @property
    def aoi_geojson(self) -> str:
        return join(self.input_dir, "aoi", "aoi.geojson")

    # ---- output ------------------------------------------------------------------------------
    @staticmethod
    def outputs_dir(root: str) -> str:
        """The folder holding one ``output/<aoi>`` folder per AOI (listed by the explorer)."""
        return join(root, "output")

    @property
    def output_dir(self) -> str:
        return join(self.root, "output", self.aoi_name)

    @property
    def meta_dir(self) -> str:
        return join(self.output_dir, "meta")

    def meta(self, scene_id: str) -> str:
        return join(self.meta_dir, f"{scene_id}{self.META_SUFFIX}")

    def meta_files(self) -> list[str]:
        """Every scene's chip-meta file (written by step 1), sorted."""
        return storage.list_files(self.meta_dir, self.META_SUFFIX)

    def meta_scene_ids(self) -> list[str]:
        """Scene ids that have a chip-meta file, sorted."""
        return [u.rsplit("/", 1)[-1].removesuffix(self.META_SUFFIX) for u in self.meta_files()]

    def _dated_dir(self, artifact: str, scene_id: str) -> str:
        s = parse_scene_id(scene_id)
        return join(self.output_dir, artifact, self.level, s.grid, str(s.date.year), str(s.date.month))

    def raw_chip(self, scene_id: str, chip_size: int, x_dim: int, y_dim: int) -> str:
        return join(
            self._dated_dir("raw-chips", scene_id), f"{scene_id}_{chip_size}_chipped_{x_dim}_{y_dim}.nc"
        )

    def rgb_thumbnail(self, scene_id: str, chip_size: int, x_dim: int, y_dim: int) -> str:
        return join(
            self._dated_dir("rgb-imgs", scene_id),
            f"{scene_id}_{chip_size}_rgb_thumbnail_{x_dim}_{y_dim}.png",
        )

    def embeddings_dir(self, model: str) -> str:
        return join(self.output_dir, "embeddings", model)

    def embedding(
        self, kind: str, model: str, scene_id: str, chip_size: int, bands: str, x_dim: int, y_dim: int
    ) -> str:
        """``kind`` is ``cls`` or ``patch``; ``bands`` a band tag such as ``red_green_blue_nir``."""
        if kind not in ("cls", "patch"):
            raise InputError(f"embedding kind must be 'cls' or 'patch', not {kind!r}")
        s = parse_scene_id(scene_id)
        folder = join(
            self.embeddings_dir(model), self.level, s.grid, str(s.date.year), str(s.date.month)
        )
        return join(folder, f"{scene_id}_{chip_size}_chip_{kind}_embeddings_{bands}_{x_dim}_{y_dim}.npy")

    def unique_chip_ids_dir(self, grid: str) -> str:
        return join(self.unique_chip_ids_root, grid)

    def unique_chip_id(self, grid: str, x_dim: int, y_dim: int) -> str:
        return join(self.unique_chip_ids_dir(grid), f"{x_dim}_{y_dim}.txt")

    def processed_embeddings_dir(self, grid: str) -> str:
        return join(self.processed_embeddings_root, grid)

    def processed_embeddings(self, grid: str, x_dim: int, y_dim: int) -> str:
        return join(self.processed_embeddings_dir(grid), f"{x_dim}_{y_dim}{self.PROCESSED_SUFFIX}")

    def processed_files(self, grid: str) -> list[str]:
        """Every processed-embeddings file of a grid (written by step 3), sorted."""
        return storage.list_files(self.processed_embeddings_dir(grid), self.PROCESSED_SUFFIX)

    def reducer_model(self, name: str = "pca") -> str:
        """The globally fitted reducer (PCA) that every chip is projected with."""
        return join(self.processed_embeddings_root, f"{name}_model.npz")

    @property
    def seasonal_model(self) -> str:
        """The seasonal baseline's period and AOI-wide floors (JSON), shared by every chip."""
        return join(self.processed_embeddings_root, "seasonal_model.json")

    @property
    def unique_chip_ids_root(self) -> str:
        """The folder holding one ``unique-chip-ids/<grid>`` folder per MGRS grid."""
        return join(self.output_dir, "unique-chip-ids")

    @property
    def processed_embeddings_root(self) -> str:
        """The folder holding one ``processed-embeddings/<grid>`` folder per MGRS grid."""
        return join(self.output_dir, "processed-embeddings")

    @property
    def analyze_rows(self) -> str:
        """Step 3's input rows (meta rows passing the limits, all chips), written once before its units."""
        return join(self.processed_embeddings_root, "analyze_rows.parquet")

    def rgb_thumbnails_dir(self, grid: str) -> str:
        """The grid's thumbnail folder (``rgb-imgs/<level>/<grid>``, dated folders below)."""
        return join(self.output_dir, "rgb-imgs", self.level, grid)

    @property
    def consolidated_root(self) -> str:
        """The folder holding one ``consolidated-output/<grid>`` folder per MGRS grid."""
        return join(self.output_dir, "consolidated-output")

    def consolidated_dir(self, grid: str) -> str:
        return join(self.consolidated_root, grid)

    def consolidated_output(self, grid: str) -> str:
        return join(self.consolidated_dir(grid), "consolidated_output.parquet")

    def chip_grid_aoi(self, grid: str) -> str:
        return join(self.consolidated_dir(grid), "chip_grid_aoi.geojson")

    def chip_grid_full_tile(self, grid: str) -> str:
        return join(self.consolidated_dir(grid), "chip_grid_full_s2_tile.geojson")

    def change_intensity(self, grid: str) -> str:
        return join(self.consolidated_dir(grid), "chip_grid_change_intensity.geojson")

    def frontend_config(self, grid: str) -> str:
        return join(self.consolidated_dir(grid), f"config_{self.aoi_name}.json")

    @property
    def lance_db(self) -> str:
        """The LanceDB database folder (its table name: ``geofm.vectordb.DEFAULT_TABLE``)."""
        return join(self.output_dir, "lance-db")

    # ---- paths stored in tables (meta, processed, consolidated, LanceDB) -----------------------
    def stored(self, url: str) -> str:
        """How a file's URL is stored in a table (the one rule, docs/formats.md "Paths in tables"):
        relative to the AOI's output folder ``output/<aoi>/`` when the file is inside it (so the folder can
        be moved, copied or read from any working folder), else an absolute URL (``s3://...``, an
        absolute local path)."""
        base, target = _absolute(self.output_dir), _absolute(url)
        if target.startswith(base + "/"):
            return target[len(base) + 1:]
        return target

    def resolve(self, value: str) -> str:
        """The URL of a path read from a table: the inverse of :meth:`stored`, and every reader's way to
        turn such a column into a URL. Tables written before the rule keep working: an absolute value
        is used as it is; a relative one that names ``output/<aoi>/`` (the working-folder-relative
        paths older runs stored) is taken from that point on, under this layout's output folder."""
        if _is_absolute(value):
            return value
        parts = value.split("/")
        for i in range(len(parts) - 2):
            if parts[i] == "output" and parts[i + 1] == self.aoi_name:
                return join(self.output_dir, *parts[i + 2:])
        return join(self.output_dir, value)

    def restore(self, value: str) -> str:
        """A stored value of any age (see :meth:`resolve`) stored again by the current rule."""
        return self.stored(self.resolve(value))

    # Columns holding stored paths (meta, analyze rows, processed, consolidated; the first two in LanceDB).
    PATH_COLUMNS = ("s3_location_netcdf", "s3_location_png_thumbnail", "s3_location_cls_emb",
                    "s3_location_patch_emb")

    # ---- exports (geofm export) --------------------------------------------------------------
    ALERT_FORMATS = ("geojson", "gpkg", "parquet")

    @property
    def exports_dir(self) -> str:
        return join(self.output_dir, "exports")

    def change_alerts(self, fmt: str) -> str:
        """The AOI's change alerts (polygons) in ``fmt``: geojson, gpkg or parquet (GeoParquet)."""
        return join(self.exports_dir, f"change_alerts.{fmt}")

    def change_raster(self, grid: str, day: str) -> str:
        """A grid's per-patch change raster (COG) on one date (``YYYY-MM-DD``)."""
        return join(self.exports_dir, grid, f"change_raster_{day}.tif")

    # ---- run bookkeeping ---------------------------------------------------------------------
    @property
    def runs_dir(self) -> str:
        return join(self.output_dir, "runs")

    def run_record(self, run_id: str) -> str:
        return join(self.runs_dir, f"{run_id}.json")

    def marker(self, step: str, unit: str) -> str:
        """Written last by a unit of work, after its outputs: its presence means 'complete'."""
        return join(self.runs_dir, "markers", step, f"{unit}.json")

    def markers_dir(self, step: str) -> str:
        return join(self.runs_dir, "markers", step)
