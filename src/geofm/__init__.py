"""geofm: Sentinel-2 chips, geospatial foundation-model embeddings, change detection and search."""

__version__ = "0.1.0"
