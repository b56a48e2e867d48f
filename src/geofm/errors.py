"""Every error geofm raises on purpose, in one hierarchy.

``GeofmError`` is the base; the CLI catches it once. Three families:

- :class:`InputError` (bad AOI, scene, config, name, model/checkpoint): the user can fix the input;
  the CLI exits 2 with the message. Also a ``ValueError``, so callers that check values keep working.
- :class:`NotFoundError`: an AOI, grid, chip, date, table or file that the output does not have
  (exit 2; HTTP 404 in the explorer). Also a ``LookupError``.
- :class:`BackendError` (STAC API, tiles, Ray, storage, remote reads): something outside geofm
  failed; the message names the URL or address and the cause (exit 1).

Messages name the input and what is wrong with it; they never need a traceback to be understood.
"""

from __future__ import annotations

from typing import Any


class GeofmError(Exception):
    """Base of every error geofm raises on purpose."""


# ---- input ---------------------------------------------------------------------------------------
class InputError(GeofmError, ValueError):
    """Input the user can fix: the message names the input and what is wrong."""


class ConfigError(InputError):
    """A parameter value, a config file or a ``--set`` pair that cannot be used."""


class InvalidNameError(ConfigError):
    """A name (AOI, model, grid...) that would be unsafe or ambiguous as a path part."""


class AoiError(InputError):
    """The AOI GeoJSON is missing, unreadable or not a usable polygon."""


class SceneError(InputError):
    """A scene cannot be read: its item JSON, an asset, a band; the message names scene and asset."""


class ModelError(InputError):
    """An unknown model, wrong or missing weights, bands the model does not take."""


# ---- not found -----------------------------------------------------------------------------------
class NotFoundError(GeofmError, LookupError):
    """Something asked for that the output does not have (AOI, grid, chip, date, table, file)."""


# ---- backends ------------------------------------------------------------------------------------
class BackendError(GeofmError, RuntimeError):
    """A service or store outside geofm failed; the message names it and the cause."""


class StacError(BackendError):
    """The STAC API did not answer, or answered with an error."""


class StorageError(BackendError):
    """Local or object storage refused a read or a write."""


class RemoteReadError(BackendError):
    """A remote asset (http(s), s3) could not be read after retries: names the URL and the cause
    (HTTP status, timeout, cut-off body)."""


class TileError(BackendError):
    """A map tile could not be rendered from its sources."""


class RayError(BackendError):
    """The Ray cluster cannot be reached or lost its workers."""


class VectorDBError(BackendError):
    """The LanceDB database or table cannot be opened or written."""


# ---- runs ----------------------------------------------------------------------------------------
class RunFailedError(GeofmError):
    """Units of work failed in a run (``geofm.run(..., check=True)``); the message is the run's summary
    and ``record`` its :class:`~geofm.pipeline.RunRecord`. The other units' outputs are written; a rerun
    redoes only what failed."""

    def __init__(self, message: str, record: Any = None) -> None:
        super().__init__(message)
        self.record = record


class InjectedFault(GeofmError):
    """A failure injected on purpose by the resilience test hook (``GEOFM_FAULTS``, geofm.markers)."""


# ---- exit codes ----------------------------------------------------------------------------------
def exit_code(exc: GeofmError) -> int:
    """2 for input and not-found errors (fix the input), 1 for backend failures."""
    return 2 if isinstance(exc, InputError | NotFoundError) else 1
