"""Remote band reads that survive the network: attempts on dropped caches, and the cause of a failure.

GDAL retries each HTTP request itself on 429/5xx and connection errors, with backoff
(:func:`geofm.storage.gdal_env` sets it up). This module does what GDAL does not:

- A body cut off mid-transfer, or stalled until the low-speed timeout aborts it, fails the read: the open
  or read is attempted again (``read_attempts``), with a backoff, on a fresh handle.
- GDAL keeps what it learnt about a URL for the life of the process, failures included (a 503 on the
  header makes the file "not exist" from then on, without another request). The file's cache is dropped
  (:func:`clear_cached`) before every new attempt, and before a scene is opened, so a retried unit of
  work really reads again.
- GDAL reports HTTP statuses and transfer errors only as warnings. They are recorded per thread while an
  attempt runs (and kept off the console: the error says it); a read that fails for good raises
  :class:`~geofm.errors.RemoteReadError` naming the URL and the cause (HTTP status, timeout, cut-off).
  When GDAL said nothing useful (or its logger ``rasterio._err`` is silenced below WARNING), one bounded
  request for the file's first bytes (:func:`probe`) finds the cause; when that request is answered
  fine, the file itself is bad and the caller's own error (bad input) is raised instead.
"""

from __future__ import annotations

import ctypes
import http.client
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from http import HTTPStatus
from typing import TypeVar

import rasterio._env
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from geofm import storage
from geofm.errors import RemoteReadError
from geofm.storage import RemoteReadSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

PROBE_BYTES = 16384  # what GDAL reads first when it opens a COG
BACKOFF_S = 0.5  # geofm's wait before its second attempt, doubled for each further one
GDAL_ERRORS = (RasterioError, CPLE_BaseError, OSError)  # what a failed GDAL open or read raises


# ---- GDAL's cache of remote files -----------------------------------------------------------------
def gdal_path(href: str) -> str:
    """The GDAL virtual path of a remote href (``/vsicurl/http...``, ``/vsis3/bucket/key``)."""
    if storage.is_s3(href):
        return "/vsis3/" + href.removeprefix("s3://")
    return "/vsicurl/" + href


@cache
def _libgdal() -> ctypes.CDLL | None:
    """GDAL's C API as rasterio links it, or None.

    Looked up through rasterio's own extension module (a symbol lookup on a library handle searches the
    libraries it depends on), never by name: other packages (pyogrio, via geopandas) load a GDAL of their
    own into the same process, whose cache is not rasterio's."""
    try:
        lib = ctypes.CDLL(rasterio._env.__file__)
        lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
        lib.VSICurlPartialClearCache.restype = None
        return lib
    except (OSError, AttributeError):
        log.warning("GDAL's VSICurlPartialClearCache not found: remote reads cannot drop GDAL's cache "
                    "before a retry")
        return None


def clear_cached(href: str) -> None:
    """Forget everything GDAL cached about ``href`` (size, existence, downloaded ranges, failures)."""
    if storage.is_remote(href) and (lib := _libgdal()) is not None:
        lib.VSICurlPartialClearCache(gdal_path(href).encode())


# ---- what GDAL said ------------------------------------------------------------------------------------
# GDAL's warnings about HTTP requests: statuses, retries, cURL errors (rasterio logs them at WARNING)
_HTTP_MESSAGE = re.compile(r"response_code=\d|HTTP (error|response) code|CURL error|Retrying again|"
                           r"timed out|too slow", re.IGNORECASE)
_STATUS = re.compile(r"(?:response_code=|HTTP (?:error|response) code:? )(\d{3})", re.IGNORECASE)


class _Recorder(logging.Filter):
    """A filter on rasterio's GDAL-message logger: HTTP messages go to the recording thread's buffer
    (and to DEBUG), not to the console; everything else passes."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not _HTTP_MESSAGE.search(message):
            return True
        buffer: deque[str] | None = getattr(self._local, "messages", None)
        if buffer is not None:
            buffer.append(message)
        log.debug("GDAL: %s", message)
        return False

    @contextmanager
    def recording(self) -> Iterator[deque[str]]:
        """Collect this thread's GDAL HTTP messages (the last few) while the block runs."""
        self._local.messages = deque(maxlen=16)
        try:
            yield self._local.messages
        finally:
            self._local.messages = None


_RECORDER = _Recorder()
logging.getLogger("rasterio._err").addFilter(_RECORDER)


def cause_of(messages: list[str]) -> str | None:
    """The network cause in GDAL's messages (latest first): an HTTP status, a timeout, a cut-off body, a
    connection error; None when they name none."""
    for message in reversed(messages):
        m = _STATUS.search(message)
        if m:
            code = int(m.group(1))
            if code in (200, 206):  # GDAL's "Request for a-b failed with response_code=206"
                return f"incomplete body: HTTP {code} but the transfer ended early (cut off or stalled)"
            try:
                return f"HTTP {code} {HTTPStatus(code).phrase}"
            except ValueError:
                return f"HTTP {code}"
        lowered = message.lower()
        if "too slow" in lowered or "timed out" in lowered:
            return f"timeout ({message.split(':', 1)[-1].strip()})"
        if "curl error" in lowered:
            return f"connection error ({message.split('CURL error:', 1)[-1].strip()})"
    return None


def _messages_of(exc: BaseException) -> list[str]:
    """Messages of an exception and the ones it was raised from or during, oldest first."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(out) < 8:
        out.insert(0, str(seen))
        seen = seen.__cause__ or seen.__context__
    return out


def permanent(cause: str | None) -> bool:
    """An HTTP status no retry will change (4xx but 408 Request Timeout and 429 Too Many Requests)."""
    m = re.match(r"HTTP (\d{3})", cause or "")
    return bool(m) and 400 <= int(m.group(1)) < 500 and int(m.group(1)) not in (408, 429)


def probe(href: str, settings: RemoteReadSettings) -> str | None:
    """One bounded request for the first bytes of ``href``: the network cause of a failure, or None
    when the server answers it fully."""
    timeout = max(settings.connect_timeout, settings.low_speed_time)  # per connect and per read
    if storage.is_s3(href):
        try:
            storage.filesystem(href).cat_file(href, start=0, end=PROBE_BYTES)
        except Exception as exc:  # any S3 failure is the cause to report
            return f"{type(exc).__name__}: {exc}"
        return None
    request = urllib.request.Request(href, headers={"Range": f"bytes=0-{PROBE_BYTES - 1}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            body = response.read(PROBE_BYTES + 1)
            if announced is not None and len(body) < min(int(announced), PROBE_BYTES):
                return f"body cut off ({len(body)} of {announced} bytes)"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except http.client.IncompleteRead as exc:
        return f"body cut off ({len(exc.partial)} bytes, then the connection closed)"
    except TimeoutError:
        return f"timeout: no answer within {timeout:g} s (stalled)"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return f"timeout: no answer within {timeout:g} s (stalled)"
        return f"connection failed: {exc.reason}"
    except (http.client.HTTPException, OSError) as exc:
        return f"connection failed: {type(exc).__name__}: {exc}"
    return None


# ---- attempts --------------------------------------------------------------------------------------------
def attempts(href: str, what: str, fn: Callable[[], T], settings: RemoteReadSettings,
             after_failure: Callable[[], None] | None = None) -> T:
    """``fn()`` (an open or a read of remote ``href``) up to ``settings.read_attempts`` times, GDAL's cache of
    the file dropped and ``after_failure()`` (e.g. closing the handle) run before each new attempt.

    Raises :class:`RemoteReadError` ("``href``: cannot ``what`` after N attempts: cause") when the last
    attempt fails for a network cause; re-raises the last GDAL error when the server answers fine (the
    file itself is bad: the caller's input error)."""
    cause: str | None = None
    last: BaseException | None = None
    n = 0
    for n in range(1, settings.read_attempts + 1):
        if n > 1:
            time.sleep(BACKOFF_S * 2 ** (n - 2))
            clear_cached(href)
        with _RECORDER.recording() as messages:
            try:
                return fn()
            except GDAL_ERRORS as exc:
                last = exc
                cause = cause_of([*messages, *_messages_of(exc)])
        if after_failure is not None:
            after_failure()
        if permanent(cause):
            break
    clear_cached(href)  # the next reader of this file (a retried unit) starts afresh
    cause = cause or probe(href, settings)
    assert last is not None
    if cause is None:
        raise last
    raise RemoteReadError(f"{href}: cannot {what} after {n} attempt{'s' * (n > 1)}: {cause}") from last
