"""Read, write, list and check URLs: local paths and ``s3://`` (fsspec/s3fs), with atomic writes.

S3-compatible endpoints (MinIO, moto) are taken from ``AWS_ENDPOINT_URL``; GDAL gets the matching
``AWS_S3_ENDPOINT`` settings from :func:`gdal_env` so rasterio reads the same bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from geofm.errors import InputError


def is_s3(url: str) -> bool:
    return str(url).startswith("s3://")


def is_remote(url: str) -> bool:
    return "://" in str(url) and not str(url).startswith("file://")


def _local(url: str) -> str:
    return str(url).removeprefix("file://")


@lru_cache(maxsize=4)
def _s3fs(endpoint: str | None) -> fsspec.AbstractFileSystem:
    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["client_kwargs"] = {"endpoint_url": endpoint}
    return fsspec.filesystem("s3", skip_instance_cache=True, **kwargs)


# s3fs instances are not fork-safe: a process-pool worker forked after its parent used S3 makes its own.
os.register_at_fork(after_in_child=_s3fs.cache_clear)


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for a URL (local or s3, honouring ``AWS_ENDPOINT_URL``)."""
    if is_s3(url):
        return _s3fs(os.environ.get("AWS_ENDPOINT_URL") or None)
    if is_remote(url):
        return fsspec.filesystem(urlparse(url).scheme)
    return fsspec.filesystem("file")


def exists(url: str) -> bool:
    if not is_remote(url):
        return os.path.exists(_local(url))
    return filesystem(url).exists(url)


def all_exist(urls: list[str]) -> bool:
    """Whether every URL exists: local files by ``stat``, object storage by one listing per folder
    (not one request per file: a scene's chips are thousands of objects)."""
    remote: dict[str, set[str]] = {}
    for url in urls:
        if not is_remote(url):
            if not os.path.exists(_local(url)):
                return False
        else:
            folder, _, name = url.rstrip("/").rpartition("/")
            remote.setdefault(folder, set()).add(name)
    for folder, names in remote.items():
        try:
            entries = filesystem(folder).ls(folder, detail=True, refresh=True)
            listed = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries}
        except FileNotFoundError:
            return False
        if not names <= listed:
            return False
    return True


def _stamp(info: dict[str, Any]) -> str:
    stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
    return f"{info.get('size')}:{stamp}"


def version(url: str) -> str:
    """Size and modification stamp of a file (local or s3): tells when a cached copy is stale."""
    return _stamp(filesystem(url).info(_local(url) if not is_remote(url) else url))


def read_bytes(url: str) -> bytes:
    if not is_remote(url):
        return Path(_local(url)).read_bytes()
    with filesystem(url).open(url, "rb") as f:
        return f.read()


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str) -> Any:
    """Parse a JSON file; a broken file raises ``ValueError`` naming the URL."""
    try:
        return json.loads(read_bytes(url))
    except json.JSONDecodeError as exc:
        raise InputError(f"{url}: not valid JSON ({exc})") from exc


def write_bytes(url: str, data: bytes) -> None:
    """Write atomically: a local file appears complete or not at all; an S3 PUT is atomic already."""
    if not is_remote(url):
        path = Path(_local(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with filesystem(url).open(url, "wb") as f:
        f.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str, obj: Any, indent: int | None = 2) -> None:
    write_text(url, json.dumps(obj, indent=indent, default=str))


def upload_file(local_path: str | Path, url: str) -> None:
    """Copy a finished local file to ``url`` atomically (used for files libraries write to disk)."""
    if not is_remote(url):
        dest = Path(_local(url))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return
    filesystem(url).put_file(str(local_path), url)


@contextlib.contextmanager
def local_file_for_write(url: str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary local path; when the block succeeds it is moved/uploaded to ``url``."""
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="geofm-")
    os.close(fd)
    try:
        yield Path(tmp)
        upload_file(tmp, url)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def local_file_for_read(url: str, suffix: str = "") -> Iterator[Path]:
    """Yield a local path holding the content of ``url`` (the file itself when it is local)."""
    if not is_remote(url):
        yield Path(_local(url))
        return
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="geofm-")
    os.close(fd)
    try:
        filesystem(url).get_file(url, tmp)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def list_files(url: str, suffix: str = "") -> list[str]:
    """Files directly under a folder URL whose names end with ``suffix``, sorted; [] if none."""
    if not is_remote(url):
        folder = Path(_local(url))
        if not folder.is_dir():
            return []
        return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix)
                      and not p.name.startswith("."))
    return sorted(_remote_files(url, suffix))


def _remote_files(url: str, suffix: str) -> dict[str, dict[str, Any]]:
    """``{URL: listing entry}`` of the files in a remote folder whose names end with ``suffix`` (one
    listing; a missing folder is empty)."""
    try:
        entries = filesystem(url).ls(url, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {("s3://" + e["name"] if is_s3(url) and not e["name"].startswith("s3://") else e["name"]): e
            for e in entries if e.get("type") == "file" and e["name"].endswith(suffix)}


def file_versions(url: str, suffix: str = "") -> dict[str, str]:
    """``{URL: version}`` of the files :func:`list_files` gives, from one listing on s3 (a cache stamp
    over a whole folder)."""
    if not is_remote(url):
        out = {}
        for u in list_files(url, suffix):
            with contextlib.suppress(FileNotFoundError):
                out[u] = version(u)
        return out
    return {u: _stamp(e) for u, e in _remote_files(url, suffix).items()}


def list_folders(url: str) -> list[str]:
    """Names of the folders directly under ``url`` (local or s3), sorted, hidden ones left out; []
    when it is missing."""
    if not is_remote(url):
        folder = Path(_local(url))
        if not folder.is_dir():
            return []
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    try:
        entries = filesystem(url).ls(url, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")


def remove(url: str, recursive: bool = False) -> None:
    """Delete a file (or a folder with ``recursive``); missing targets are fine."""
    if not is_remote(url):
        p = Path(_local(url))
        if p.is_dir() and recursive:
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return
    fs = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(url, recursive=recursive)


def ensure_writable(url: str) -> None:
    """Check that ``url`` (a folder) can be written, leaving nothing behind: a local folder by its
    nearest existing ancestor's permissions, object storage by writing and removing a probe object."""
    if not is_remote(url):
        path = Path(_local(url)).absolute()
        ancestor = next(p for p in (path, *path.parents) if p.exists())
        if not ancestor.is_dir():
            raise InputError(f"output location {url!r} is not writable: {ancestor} is a file")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"output location {url!r} is not writable: no permission on {ancestor}")
        return
    probe = url.rstrip("/") + f"/.geofm-write-probe-{uuid.uuid4().hex}"
    try:
        write_bytes(probe, b"ok")
        remove(probe)
    except Exception as exc:  # any backend error means "not writable" to the user
        raise InputError(f"output location {url!r} is not writable: {exc}") from exc


# GDAL's raster block cache per process. GDAL's default is 5% of the machine's memory per process (1.2 GB
# on 24 GB), which a whole-tile scene fills in every pool worker; 256 MB holds a whole row of 1024 px COG
# blocks of all 13 bands and SCL, which is all that chips read row by row reuse.
GDAL_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class RemoteReadSettings:
    """How GDAL reads remote rasters (http(s), s3). The defaults are the pipeline's (``PipelineConfig``'s
    ``remote_*`` parameters take theirs from here; see README "Remote reads")."""

    retries: int = 5  # GDAL_HTTP_MAX_RETRY: retries of a request on the retry codes and connection errors
    retry_delay: float = 0.5  # GDAL_HTTP_RETRY_DELAY, s: the first wait; GDAL doubles it (with jitter)
    retry_codes: str = "429,500,502,503,504"  # GDAL_HTTP_RETRY_CODES: HTTP statuses worth a retry
    connect_timeout: float = 10.0  # GDAL_HTTP_CONNECTTIMEOUT, s
    low_speed_time: int = 10  # GDAL_HTTP_LOW_SPEED_TIME, s: a transfer this long below the limit is aborted
    low_speed_limit: int = 1024  # GDAL_HTTP_LOW_SPEED_LIMIT, bytes/s
    read_attempts: int = 3  # geofm's attempts of each open/read after GDAL's retries, caches dropped between
    read_threads: int = 16  # band reads in flight per scene (hides the round trip of each request)


def gdal_env(*hrefs: str, remote: RemoteReadSettings | None = None) -> dict[str, str | int]:
    """GDAL config options for reading ``hrefs``: the one place GDAL's settings are made.

    - a bounded raster block cache per process (:data:`GDAL_CACHE_BYTES`);
    - ``s3://`` from the endpoint in ``AWS_ENDPOINT_URL`` (path-style, http or https as the endpoint says);
    - remote hrefs: HTTP retries with exponential backoff on ``remote.retry_codes`` and connection errors,
      connect and low-speed (stall) timeouts, no directory listing on open (it costs requests; local
      files keep it, their georeferencing may sit in ``.aux.xml`` sidecars);
    - file sizes by HEAD for http(s) (a GET of the whole file otherwise, aborted by the client); not for
      S3, whose signed GETs GDAL handles itself.
    """
    remote = remote or RemoteReadSettings()
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    http = any(is_remote(h) and not is_s3(h) for h in hrefs)
    opts: dict[str, str | int] = {"CPL_VSIL_CURL_USE_HEAD": "YES" if http else "NO",
                                  "GDAL_CACHEMAX": GDAL_CACHE_BYTES}
    if any(is_remote(h) for h in hrefs):
        opts.update({
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "GDAL_HTTP_MAX_RETRY": str(remote.retries),
            "GDAL_HTTP_RETRY_DELAY": str(remote.retry_delay),
            "GDAL_HTTP_RETRY_CODES": remote.retry_codes,
            "GDAL_HTTP_CONNECTTIMEOUT": str(remote.connect_timeout),
            "GDAL_HTTP_LOW_SPEED_TIME": str(remote.low_speed_time),
            "GDAL_HTTP_LOW_SPEED_LIMIT": str(remote.low_speed_limit),
        })
    if endpoint:
        parsed = urlparse(endpoint)
        opts["AWS_S3_ENDPOINT"] = parsed.netloc
        opts["AWS_HTTPS"] = "YES" if parsed.scheme == "https" else "NO"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return opts


def lancedb_storage_options(uri: str) -> dict[str, str]:
    """LanceDB ``storage_options`` for ``uri``: {} when local; for ``s3://`` the endpoint, region and keys
    from the AWS_* environment (keys left to the default chain when unset), so LanceDB writes the same
    bucket as fsspec and GDAL, S3-compatible servers (MinIO, moto) included."""
    if not is_s3(uri):
        return {}
    opts: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["allow_http"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["aws_region"] = region
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(var):
            opts[var.lower()] = os.environ[var]
    if endpoint:  # path-style addressing: S3-compatible servers rarely serve bucket subdomains
        opts["aws_virtual_hosted_style_request"] = "false"
    return opts
