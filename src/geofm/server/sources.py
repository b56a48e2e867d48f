"""What the explorer may open for map tiles: the one gate between the hrefs that stored STAC items name
and the files and URLs that GDAL reads.

Allowed: local files (after resolving symlinks and ``..``) inside the output root or a scene archive
root the server was given; ``s3://`` objects under an ``s3://`` root; and, only when the server was
started with remote assets allowed, ``http(s)://`` and ``s3://`` URLs of public hosts (never loopback,
private, link-local or ``localhost`` names). Never: GDAL ``/vsi*`` paths, ``file://`` URLs of other
hosts, other schemes or driver prefixes (``HDF5:``, ``vrt://``...), URLs carrying credentials.
Whatever is refused raises :class:`~geofm.errors.TileError` before anything is opened.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from geofm import storage
from geofm.errors import TileError

REMOTE_SCHEMES = ("http", "https", "s3")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class SourceRefused(TileError):
    """An asset href that the explorer must not open; the message says why (never the server's roots)."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _s3_norm(url: str) -> str:
    """``s3://bucket/a/../b`` -> ``s3://bucket/b`` (so a prefix check cannot be walked out of)."""
    parts = urlsplit(url)
    path = posixpath.normpath("/" + parts.path.lstrip("/")) if parts.path else ""
    return f"s3://{parts.netloc}{'' if path in ('', '/') else path}"


def public_host(host: str | None) -> bool:
    """True for a host name or address that is not this machine or a private network."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return True  # a DNS name: allowed by the operator's --allow-remote-assets
    return addr.is_global


class SourcePolicy:
    """The roots and the remote switch that decide which asset hrefs may be read (see the module doc)."""

    def __init__(self, roots: Sequence[str], allow_remote: bool = False) -> None:
        self.local_roots = tuple(os.path.realpath(r) for r in roots if r and not storage.is_remote(r))
        self.s3_roots = tuple(_s3_norm(r) for r in roots if r and storage.is_s3(r))
        self.allow_remote = allow_remote

    def resolve(self, href: str, base: str) -> str:
        """The file path or URL to open for ``href`` as written in an item stored at ``base``; relative
        hrefs are resolved against ``base``. Refused hrefs raise :class:`SourceRefused`."""
        if not isinstance(href, str) or not href.strip() or "\x00" in href:
            raise SourceRefused("asset href is empty or not text")
        if href.lower().startswith("/vsi"):
            raise SourceRefused("GDAL virtual file system paths (/vsi...) in item data are not opened")
        parts = urlsplit(href)
        scheme = parts.scheme.lower()
        if scheme in REMOTE_SCHEMES:
            return self._remote(href, scheme)
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise SourceRefused("file:// URL names another host")
            return self._local(unquote(parts.path))
        if scheme:
            raise SourceRefused(f"asset href scheme {scheme!r} is not opened (only paths, http(s), s3)")
        if href.startswith("/"):
            return self._local(href)
        return self._relative(href, base)

    def _relative(self, href: str, base: str) -> str:
        if storage.is_s3(base):
            return self._remote(_s3_norm(posixpath.join(posixpath.dirname(base), href)), "s3")
        if storage.is_remote(base):
            raise SourceRefused("relative href in a remote item")
        base_path = unquote(urlsplit(base).path) if base.startswith("file://") else base
        return self._local(os.path.join(os.path.dirname(base_path), href))

    def _local(self, path: str) -> str:
        real = os.path.realpath(path)
        if not any(_inside(real, root) for root in self.local_roots):
            raise SourceRefused("asset file lies outside the output root and the scene archives")
        if not os.path.isfile(real):
            raise SourceRefused("asset is not a regular file")
        return real

    def _remote(self, url: str, scheme: str) -> str:
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise SourceRefused("asset URL carries credentials")
        if scheme == "s3":
            norm = _s3_norm(url)
            if any(_inside(norm, root) for root in self.s3_roots):
                return norm
        if not self.allow_remote:
            raise SourceRefused(f"remote asset ({scheme}) not allowed: start the explorer with "
                                "--allow-remote-assets to read scene COGs from their hosts")
        if scheme == "s3":
            return _s3_norm(url)
        if not public_host(parts.hostname):
            raise SourceRefused("remote asset on a loopback, private or link-local host is not opened")
        return url
