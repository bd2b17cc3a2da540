"""Shared test fixtures: the bundled models' specs, and their exports made once per session."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `models.catalog` importable from tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download


@pytest.fixture(scope="session")
def exported_bundled(tmp_path_factory):
    """name -> (LoadedModel, ExportResult) for every bundled model, exported once (default modes)."""
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec
    from models.catalog import BUNDLED, spec_path

    out = tmp_path_factory.mktemp("bundled")
    result = {}
    for name, spec in BUNDLED.items():
        loaded = load_spec(spec_path(spec))
        result[name] = (loaded, export_model(loaded, out / f"{name}.onnx"))
    return result
