"""The C++ header under plugins/ is exactly what ln_deploy/plugin_spec.py generates."""

import subprocess
import sys
from pathlib import Path

from ln_deploy import plugin_spec

HEADER = Path(__file__).resolve().parents[2] / "plugins" / "common" / "lnDeployPluginSpec.h"


def test_committed_header_equals_generated():
    generated = subprocess.run([sys.executable, "-m", "ln_deploy.plugin_spec", "--header"], check=True,
                               capture_output=True, text=True).stdout
    assert generated == plugin_spec.cpp_header()
    assert HEADER.read_text() == generated, (
        "plugins/common/lnDeployPluginSpec.h is stale: regenerate it with "
        "`python -m ln_deploy.plugin_spec --header > plugins/common/lnDeployPluginSpec.h`")


def test_header_lists_every_field_of_every_plugin():
    text = HEADER.read_text()
    for p in plugin_spec.PLUGINS:
        assert f'"{p.name}"' in text
        for f in p.fields:
            assert f"X({f.name}, {f.type}," in text
