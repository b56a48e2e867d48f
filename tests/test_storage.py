"""Local storage basics: atomic JSON round trip, listing files and folders."""

import pytest

from geofm import storage


def test_storage_atomic_roundtrip(tmp_path):
    url = str(tmp_path / "a" / "b.json")
    storage.write_json(url, {"k": 1})
    assert storage.read_json(url) == {"k": 1}
    assert storage.list_files(str(tmp_path / "a"), ".json") == [url]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        storage.read_json(str(tmp_path / "bad.json"))


def test_list_folders(tmp_path):
    for name in ("33TWL", "20LPP", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert storage.list_folders(str(tmp_path)) == ["20LPP", "33TWL"]
    assert storage.list_folders(str(tmp_path / "missing")) == []
