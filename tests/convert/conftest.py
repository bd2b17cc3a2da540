"""Fixtures for the convert tests: quiet progress, and small hand-built graphs."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _quiet():
    from ln_deploy import progress

    progress.set_quiet(True)
    yield
    progress.set_quiet(False)
