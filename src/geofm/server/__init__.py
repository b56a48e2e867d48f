"""The explorer: a web map for similarity search and change detection over a pipeline output."""

from geofm.server.app import ExplorerOptions, create_app, serve

__all__ = ["ExplorerOptions", "create_app", "serve"]
