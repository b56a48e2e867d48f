"""Shared test set-up. Fixtures live in ``tests/fixtures/*.py``, one module per topic, loaded here."""

from pathlib import Path

_FIXTURES = Path(__file__).parent / "fixtures"
pytest_plugins = sorted(f"fixtures.{p.stem}" for p in _FIXTURES.glob("*.py") if not p.name.startswith("_"))
