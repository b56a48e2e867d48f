"""geofm: Sentinel-2 chips, geospatial foundation-model embeddings, change detection and search.

``geofm.run(...)`` runs the pipeline; ``geofm.open(output_root, aoi_name)`` reads what it made
(:mod:`geofm.api`). Importing geofm loads neither of the heavy libraries: they load on first use.
"""

from geofm.api import ExplorerUrls, Results, open, run
from geofm.errors import GeofmError, NotFoundError, RunFailedError

__version__ = "0.1.0"
__all__ = ["ExplorerUrls", "GeofmError", "NotFoundError", "Results", "RunFailedError", "open", "run"]
