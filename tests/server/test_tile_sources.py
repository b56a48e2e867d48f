"""Which asset hrefs the explorer may open (geofm.server.sources.SourcePolicy): local files inside its
roots only (symlinks and ``..`` resolved first), s3 objects under an s3 root, public remote hosts only
when allowed, never /vsi paths, driver prefixes, other schemes, FIFOs or credentials in URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geofm.errors import TileError
from geofm.server.sources import SourcePolicy, SourceRefused, public_host


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    out, arch, outside = tmp_path / "out", tmp_path / "archive", tmp_path / "outside"
    for d in (out / "items", arch, outside):
        d.mkdir(parents=True)
    for f in (out / "items" / "a.tif", arch / "b.tif", outside / "c.tif"):
        f.write_bytes(b"II*\x00")
    (out / "items" / "link.tif").symlink_to(outside / "c.tif")
    (out / "items" / "inlink.tif").symlink_to(out / "items" / "a.tif")
    (out / "items" / "dirlink").symlink_to(outside)
    os.mkfifo(out / "items" / "fifo.tif")
    return {"out": out, "arch": arch, "outside": outside, "item": out / "items" / "x.json"}


def test_local_files_inside_the_roots(tree):
    policy = SourcePolicy([str(tree["out"]), str(tree["arch"])])
    item = str(tree["item"])
    a = str((tree["out"] / "items" / "a.tif").resolve())
    for href in (a, "a.tif", "./a.tif", "inlink.tif", f"file://{a}", f"file://localhost{a}",
                 "../items/a.tif"):
        assert policy.resolve(href, item) == a, href
    assert policy.resolve(str(tree["arch"] / "b.tif"), item) == str((tree["arch"] / "b.tif").resolve())
    assert policy.resolve("a.tif", f"file://{item}") == a


@pytest.mark.parametrize("href", [
    "{outside}/c.tif", "../../outside/c.tif", "link.tif", "dirlink/c.tif", "fifo.tif", ".", "/etc/passwd",
    "file:///etc/passwd", "file://otherhost/etc/passwd", "/vsicurl/http://127.0.0.1:9/x.tif",
    "/VSICURL/http://127.0.0.1:9/x.tif", "/vsis3/bucket/x.tif", "/vsizip//etc/x.zip/y.tif",
    "/vsimem/x.tif", "HDF5:/etc/x.h5://band", "NETCDF:/etc/x.nc:var", "vrt:///etc/x.tif",
    "GTIFF_DIR:1:/etc/x.tif", "ftp://example.com/x.tif", "gs://bucket/x.tif", "http://example.com/x.tif",
    "https://example.com/x.tif", "s3://bucket/x.tif", "", "   ", "a.tif\x00.png",
])
def test_refused_without_remote(tree, href):
    policy = SourcePolicy([str(tree["out"]), str(tree["arch"])])
    with pytest.raises(SourceRefused) as err:
        policy.resolve(href.format(outside=tree["outside"]), str(tree["item"]))
    assert isinstance(err.value, TileError)
    assert str(tree["out"]) not in str(err.value) and str(tree["outside"]) not in str(err.value)


def test_not_text_is_refused(tree):
    with pytest.raises(SourceRefused):
        SourcePolicy([str(tree["out"])]).resolve(None, str(tree["item"]))  # type: ignore[arg-type]


def test_remote_hosts_only_when_allowed_and_public(tree):
    policy = SourcePolicy([str(tree["out"])], allow_remote=True)
    item = str(tree["item"])
    for href in ("https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/20/L/PP/B04.tif",
                 "http://93.184.216.34/x.tif"):
        assert policy.resolve(href, item) == href
    assert policy.resolve("s3://bucket/a/../b.tif", item) == "s3://bucket/b.tif"
    for href in ("http://127.0.0.1:9/x.tif", "http://localhost/x.tif", "http://LOCALHOST./x.tif",
                 "http://[::1]/x.tif", "http://10.1.2.3/x.tif", "http://192.168.0.1/x.tif",
                 "http://169.254.169.254/latest/meta-data/", "http://foo.localhost/x.tif", "http://0.0.0.0/x",
                 "https://user:secret@example.com/x.tif", "/vsicurl/https://example.com/x.tif",
                 "http:///x.tif", "{outside}/c.tif"):
        with pytest.raises(SourceRefused):
            policy.resolve(href.format(outside=tree["outside"]), item)
    assert not public_host("127.0.0.2") and not public_host("fe80::1") and public_host("example.com")


def test_s3_roots_by_prefix():
    policy = SourcePolicy(["s3://bkt/out"])
    item = "s3://bkt/out/processing/a/input/sentinel2_scenes/x_metadata.json"
    assert policy.resolve("s3://bkt/out/cogs/a.tif", item) == "s3://bkt/out/cogs/a.tif"
    assert policy.resolve("a.tif", item) == "s3://bkt/out/processing/a/input/sentinel2_scenes/a.tif"
    for href in ("s3://bkt/outer/a.tif", "s3://bkt/out/../secret/a.tif", "../../../../../../secret/a.tif",
                 "s3://other/out/a.tif", "/vsis3/bkt/out/a.tif"):
        with pytest.raises(SourceRefused):
            policy.resolve(href, item)
