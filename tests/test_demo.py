"""The README's first command: `ln-deploy demo` exports and checks bundled models on the CPU."""

import subprocess
import sys


def _demo(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", "ln_deploy", "demo", "--out", str(tmp_path / "demo"), *args],
                          capture_output=True, text=True, timeout=600)


def test_demo_exports_checks_and_prints_a_table(tmp_path):
    r = _demo("--models", "convnext_block", "rms_decoder_block", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["model", "nodes", "norm"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:] if ln and ln.split()[0] in ("convnext_block", "rms_decoder_block")}
    assert set(rows) == {"convnext_block", "rms_decoder_block"}
    # rms_decoder_block has 3 RMSNorm modules, spelled out by the exporter (0 single ops)
    assert rows["rms_decoder_block"][2:4] == ["3", "0"]
    # convnext_block's two LayerNorm2d wrap an nn.LayerNorm each: two norms, exported as two ops
    assert rows["convnext_block"][2:4] == ["2", "2"]
    assert all(row[5] == "PASS" for row in rows.values())
    assert "2/2 bundled models passed" in r.stdout
    for name in rows:
        assert (tmp_path / "demo" / f"{name}.onnx").is_file()
        assert (tmp_path / "demo" / f"{name}.check" / "report.json").is_file()
    # one progress line per model unless --verbose
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 2, r.stderr


def test_demo_refuses_an_unknown_model(tmp_path):
    r = _demo("--models", "no_such_model", tmp_path=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "no_such_model" in r.stderr
