"""Fixtures of the explorer's API tests: a TestClient over the explorer output fixture (both AOIs)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from geofm.server import ExplorerOptions, create_app


@pytest.fixture(scope="module")
def client(explorer_output) -> TestClient:
    """The explorer app over the output root, allowed to read the pipeline AOI's scene archive."""
    opts = ExplorerOptions(archives=(explorer_output.archive,))
    return TestClient(create_app(str(explorer_output.root), opts), base_url="http://localhost")


@pytest.fixture(scope="module")
def hand(explorer_output):
    """The hand-made AOI in the same output root."""
    return explorer_output.hand
