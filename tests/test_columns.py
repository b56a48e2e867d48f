"""The shared column schema: which columns are a chip's time series, in what order (geofm.open's
``series`` and the explorer's chip series both use it)."""

from __future__ import annotations

from geofm import columns


def test_series_fields_order_pca_components_by_number() -> None:
    names = ["chip_id", "patch_emb_pca_10", "cloud_cover_perc", "patch_emb_pca_2", "cosine_sim",
             "class_emb_pca_1", "patch_emb_pca_1", "geometry"]
    assert columns.series_fields(names) == ["cosine_sim", "cloud_cover_perc", "class_emb_pca_1",
                                            "patch_emb_pca_1", "patch_emb_pca_2", "patch_emb_pca_10"]
