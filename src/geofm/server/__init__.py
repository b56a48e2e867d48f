"""The explorer: a web map for similarity search and change detection over a pipeline output."""

from geofm.server.app import create_app, serve

__all__ = ["create_app", "serve"]
