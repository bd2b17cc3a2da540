"""Issue 13: a graph claiming a dynamic axis it does not honour is never written by `export` and
fails `check` (exit 1) with the axis and the size named; `check` lists every shape it ran."""

from pathlib import Path

import onnx
import pytest

from ln_deploy.cli import main
from ln_deploy.errors import CheckFailedError

MODELS = Path(__file__).parents[1] / "export" / "user_models.py"
LOOP = f"{MODELS}:gru_loop"  # a GRUCell + LayerNorm Python loop: 10 steps baked into the trace


def test_export_refuses_a_legacy_graph_forced_to_claim_a_dynamic_sequence(tmp_path):
    from ln_deploy.export import export_model

    out = tmp_path / "m.onnx"
    with pytest.raises(CheckFailedError) as e:
        export_model(LOOP, out, exporter="legacy", dynamic_axes={"x": {0: "batch", 1: "seq"}})
    msg = str(e.value)
    assert "x:1=seq" in msg and "seq=" in msg and "nothing written" in msg and "x:static" in msg
    assert not out.exists()


def test_legacy_export_of_the_loop_fixes_the_sequence_it_cannot_honour(tmp_path):
    """Without a forced axis the legacy exporter's candidates are verified too: seq is fixed, with why."""
    from ln_deploy.export import export_model

    res = export_model(LOOP, tmp_path / "m.onnx", exporter="legacy")
    axes = {(a["input"], a["axis"]): a for a in res.axes}
    assert axes[("x", 0)]["dynamic"] and not axes[("x", 1)]["dynamic"]
    assert "does not honour it" in axes[("x", 1)]["why"] and "seq=" in axes[("x", 1)]["why"]
    dims = onnx.load(res.path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 10


@pytest.fixture(scope="module")
def lying_graph(tmp_path_factory):
    """The loop's honest export (seq fixed at 10), edited to claim a dynamic seq on input and output."""
    from ln_deploy.export import export_model

    d = tmp_path_factory.mktemp("lying")
    res = export_model(LOOP, d / "honest.onnx")
    m = onnx.load(res.path)
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[1].Clear()
        vi.type.tensor_type.shape.dim[1].dim_param = "seq"
    path = d / "lying.onnx"
    onnx.save(m, str(path))
    return path


def test_check_fails_naming_the_axis_and_the_size(lying_graph, tmp_path, capsys):
    rc = main(["-q", "check", LOOP, "--onnx", str(lying_graph), "--no-invariance", "--no-plots",
               "--report-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 1, out
    # at the example shape it passes (that is what used to hide the lie); along seq it does not
    assert "x[1] (seq)" in out and "seq=20" in out and "PyTorch gives [2, 20, 16]" in out, out
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Shapes run" in md and "seq=1" in md and "seq=11" in md and "batch=4" in md


def test_check_lists_every_shape_it_ran(lying_graph):
    from ln_deploy.check import check_model

    report = check_model(LOOP, lying_graph, invariance=False, localise=False)
    assert not report.passed
    by = {(s["label"], s["size"]): s for s in report.shapes if s["size"] is not None}
    assert set(by) == {("batch", 1), ("batch", 2), ("batch", 4), ("batch", 3),
                       ("seq", 1), ("seq", 10), ("seq", 20), ("seq", 11)}
    assert all(by[("batch", b)]["passed"] for b in (1, 2, 3, 4)) and by[("seq", 10)]["passed"]
    assert not any(by[("seq", s)]["passed"] for s in (1, 11, 20))
    assert any("x[1] (seq)" in f and "seq=11" in f for f in report.failures)
