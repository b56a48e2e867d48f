"""Every function of ``geofm.storage`` against a real S3-compatible server (moto, loopback), plus
rasterio reading a COG from ``s3://`` through ``gdal_env`` and LanceDB on ``s3://``."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from geofm import storage
from geofm.errors import InputError


def _client(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"])


def _keys(env: dict[str, str], bucket: str) -> list[str]:
    resp = _client(env).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def test_write_read_roundtrip(s3_bucket: str, s3_env: dict[str, str]) -> None:
    url = f"s3://{s3_bucket}/out/a/b.bin"
    storage.write_bytes(url, b"\x00\x01chip")
    assert storage.read_bytes(url) == b"\x00\x01chip"
    # the object is really on the server, under the expected key
    body = _client(s3_env).get_object(Bucket=s3_bucket, Key="out/a/b.bin")["Body"].read()
    assert body == b"\x00\x01chip"

    storage.write_text(f"s3://{s3_bucket}/t.txt", "héllo")
    assert storage.read_text(f"s3://{s3_bucket}/t.txt") == "héllo"

    storage.write_json(f"s3://{s3_bucket}/m.json", {"chip_id": "3_4", "n": 2})
    assert storage.read_json(f"s3://{s3_bucket}/m.json") == {"chip_id": "3_4", "n": 2}


def test_overwrite_is_seen_by_next_read(s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/x.json"
    storage.write_json(url, {"v": 1})
    storage.write_json(url, {"v": 2})
    assert storage.read_json(url) == {"v": 2}


def test_read_json_broken_names_url(s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/broken.json"
    storage.write_text(url, "{not json")
    with pytest.raises(ValueError, match=f"s3://{s3_bucket}/broken.json"):
        storage.read_json(url)


def test_read_missing_object_raises_file_not_found(s3_bucket: str) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://{s3_bucket}/nope.bin")


def test_exists(s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/dir/f.txt"
    assert not storage.exists(url)
    storage.write_text(url, "x")
    assert storage.exists(url)
    assert storage.exists(f"s3://{s3_bucket}/dir")  # a "folder" with objects under it
    assert not storage.exists(f"s3://{s3_bucket}/dir/g.txt")


def test_exists_sees_object_written_by_another_client(s3_bucket: str, s3_env: dict[str, str]) -> None:
    url = f"s3://{s3_bucket}/late/f.txt"
    assert not storage.exists(url)
    assert storage.list_files(f"s3://{s3_bucket}/late") == []
    _client(s3_env).put_object(Bucket=s3_bucket, Key="late/f.txt", Body=b"1")  # e.g. a Ray worker
    assert storage.exists(url)
    assert storage.list_files(f"s3://{s3_bucket}/late") == [url]


def test_list_files(s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/meta"
    for name in ("b_chip_meta.parquet", "a_chip_meta.parquet", "notes.txt", "sub/c_chip_meta.parquet"):
        storage.write_bytes(f"{root}/{name}", b"1")
    assert storage.list_files(root, "_chip_meta.parquet") == [
        f"{root}/a_chip_meta.parquet", f"{root}/b_chip_meta.parquet"]
    assert storage.list_files(root + "/") == [
        f"{root}/a_chip_meta.parquet", f"{root}/b_chip_meta.parquet", f"{root}/notes.txt"]
    assert storage.list_files(f"s3://{s3_bucket}/missing") == []
    assert storage.list_folders(root) == ["sub"] and storage.list_folders(f"s3://{s3_bucket}/missing") == []


def test_remove(s3_bucket: str, s3_env: dict[str, str]) -> None:
    storage.write_text(f"s3://{s3_bucket}/keep.txt", "k")
    storage.write_text(f"s3://{s3_bucket}/one.txt", "1")
    storage.write_text(f"s3://{s3_bucket}/tree/a.txt", "a")
    storage.write_text(f"s3://{s3_bucket}/tree/deep/b.txt", "b")
    storage.remove(f"s3://{s3_bucket}/one.txt")
    storage.remove(f"s3://{s3_bucket}/tree", recursive=True)
    storage.remove(f"s3://{s3_bucket}/never-there.txt")  # missing targets are fine
    assert _keys(s3_env, s3_bucket) == ["keep.txt"]
    assert not storage.exists(f"s3://{s3_bucket}/one.txt")


def test_upload_file_and_local_file_helpers(s3_bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "local.bin"
    src.write_bytes(b"payload" * 1000)
    storage.upload_file(src, f"s3://{s3_bucket}/up/local.bin")
    assert storage.read_bytes(f"s3://{s3_bucket}/up/local.bin") == b"payload" * 1000

    with storage.local_file_for_write(f"s3://{s3_bucket}/up/made.npy", suffix=".npy") as p:
        np.save(p, np.arange(6, dtype=np.float32).reshape(2, 3))
    with storage.local_file_for_read(f"s3://{s3_bucket}/up/made.npy", suffix=".npy") as p:
        arr = np.load(p, allow_pickle=False)
    assert arr.shape == (2, 3) and arr[1, 2] == 5.0
    assert not p.exists()  # the temporary copy is cleaned up


def test_failed_local_write_uploads_nothing(s3_bucket: str, s3_env: dict[str, str]) -> None:
    with pytest.raises(RuntimeError), storage.local_file_for_write(f"s3://{s3_bucket}/half.bin") as p:
        p.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert _keys(s3_env, s3_bucket) == []


def test_ensure_writable_ok_leaves_no_probe(s3_bucket: str, s3_env: dict[str, str]) -> None:
    storage.ensure_writable(f"s3://{s3_bucket}/output")
    assert _keys(s3_env, s3_bucket) == []


def test_ensure_writable_missing_bucket(s3_env: dict[str, str]) -> None:
    with pytest.raises(InputError, match="s3://geofm-no-such-bucket/out"):
        storage.ensure_writable("s3://geofm-no-such-bucket/out")


def test_ensure_writable_read_only_bucket(s3_bucket: str, s3_env: dict[str, str]) -> None:
    deny_writes = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{s3_bucket}/*"}]}
    _client(s3_env).put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps(deny_writes))
    with pytest.raises(InputError, match=f"s3://{s3_bucket}/out.*not writable"):
        storage.ensure_writable(f"s3://{s3_bucket}/out")


def _write_cog(path: Path) -> np.ndarray:
    """A 512x512 uint16 COG in UTM with distinct values per pixel, 256-pixel tiles."""
    data = (np.arange(512 * 512, dtype=np.uint32) % 60000).astype(np.uint16).reshape(1, 512, 512)
    profile = {"driver": "COG", "width": 512, "height": 512, "count": 1, "dtype": "uint16",
               "crs": "EPSG:32620", "transform": from_origin(600000, 8700000, 10, 10), "nodata": 0,
               "blocksize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


def test_rasterio_reads_cog_window_from_s3(s3_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "B04.tif"
    data = _write_cog(local)
    url = f"s3://{s3_bucket}/sentinel-cogs/20/L/PP/B04.tif"
    storage.upload_file(local, url)
    window = Window(300, 100, 64, 48)
    with rasterio.Env(**storage.gdal_env(url)), rasterio.open(url) as src:
        remote = src.read(1, window=window)
        assert src.crs.to_epsg() == 32620
        assert src.transform == from_origin(600000, 8700000, 10, 10)
    with rasterio.open(local) as src:
        expected = src.read(1, window=window)
    np.testing.assert_array_equal(remote, expected)
    assert remote[0, 0] == data[0, 100, 300]  # pixel (row 100, col 300) of the original


def test_gdal_env_follows_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    env = storage.gdal_env()
    assert env["AWS_S3_ENDPOINT"] == "127.0.0.1:9999"
    assert env["AWS_HTTPS"] == "NO" and env["AWS_VIRTUAL_HOSTING"] == "FALSE"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert "AWS_S3_ENDPOINT" not in storage.gdal_env()
    # listing on open is only switched off for remote files: local ones may have .aux.xml sidecars
    assert storage.gdal_env("s3://b/B04.tif")["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert "GDAL_DISABLE_READDIR_ON_OPEN" not in storage.gdal_env("/data/B04.tif")


def test_lancedb_storage_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage.lancedb_storage_options("/tmp/lance-db") == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    opts = storage.lancedb_storage_options("s3://b/out/lance-db")
    assert opts == {"aws_endpoint": "http://127.0.0.1:9999", "allow_http": "true", "aws_region": "eu-west-1",
                    "aws_access_key_id": "k", "aws_secret_access_key": "s",
                    "aws_virtual_hosted_style_request": "false"}


def test_lancedb_on_s3(s3_bucket: str) -> None:
    import lancedb
    import pyarrow as pa

    uri = f"s3://{s3_bucket}/output/aoi/lance-db"
    db = lancedb.connect(uri, storage_options=storage.lancedb_storage_options(uri))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    table = pa.table({"chip_id": [f"{i}_0" for i in range(20)],
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8)})
    db.create_table("vector_db", table, mode="overwrite")
    assert storage.list_files(uri + "/vector_db.lance/_versions")  # really written to the bucket

    again = lancedb.connect(uri, storage_options=storage.lancedb_storage_options(uri))
    tbl = again.open_table("vector_db")
    assert tbl.count_rows() == 20
    hit = tbl.search(vectors[7]).limit(1).to_list()[0]
    assert hit["chip_id"] == "7_0"
