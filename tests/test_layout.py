"""Layout paths follow the seed spec's output layout (the contract)."""

from geofm.layout import Layout


def test_layout_matches_spec():
    lay = Layout("s3://b/p", "brazil")
    sid = "S2A_20LPP_20220606_0_L2A"
    assert lay.scene_metadata(sid) == f"s3://b/p/processing/brazil/input/sentinel2_scenes/{sid}_metadata.json"
    assert lay.meta(sid) == f"s3://b/p/output/brazil/meta/{sid}_chip_meta.parquet"
    assert lay.raw_chip(sid, 256, 3, 7) == f"s3://b/p/output/brazil/raw-chips/l2a/20LPP/2022/6/{sid}_256_chipped_3_7.nc"
    assert lay.rgb_thumbnail(sid, 256, 3, 7).endswith(f"rgb-imgs/l2a/20LPP/2022/6/{sid}_256_rgb_thumbnail_3_7.png")
    assert lay.unique_chip_id("20LPP", 3, 7) == "s3://b/p/output/brazil/unique-chip-ids/20LPP/3_7.txt"
    assert lay.processed_embeddings("20LPP", 3, 7).endswith("processed-embeddings/20LPP/3_7_processed_embeddings.parquet")
    assert lay.consolidated_output("20LPP").endswith("consolidated-output/20LPP/consolidated_output.parquet")
    assert lay.frontend_config("20LPP").endswith("consolidated-output/20LPP/config_brazil.json")
