"""Issue 13: normalizations are found by what the graph computes, not by class name. A hand-written
``ManualLN`` (no "Norm" in its name) damaged by 1% in its scale is the first divergence; `advise` names
the same module; and when nothing could be compared, the report says so instead of "no divergence"."""

from pathlib import Path

import onnx
import pytest

from ln_deploy.cli import main

MODELS = Path(__file__).parents[1] / "export" / "user_models.py"
SPEC = f"{MODELS}:manual_ln_mlp"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ln_deploy.export import export_model

    d = tmp_path_factory.mktemp("manual_ln")
    return export_model(SPEC, d / "m.onnx").path


def test_scale_perturbed_by_one_percent_is_named_as_the_first_divergence(exported, tmp_path, capsys):
    from ln_deploy.check import perturb_scale

    damaged = tmp_path / "damaged.onnx"
    onnx.save(perturb_scale(onnx.load(exported), "ln", 1.01), str(damaged))
    rc = main(["-q", "check", SPEC, "--onnx", str(damaged), "--json"])
    import json

    report = json.loads(capsys.readouterr().out)
    assert rc == 1
    fd = report["first_divergence"]
    assert (fd["module_path"], fd["module_class"]) == ("ln", "ManualLN"), fd
    assert fd["stats"]["max_abs"] > 1e-3
    assert report["failures"][0].startswith("onnxrt-cpu: ") or any("first diverging normalization is ln" in f
                                                                  for f in report["failures"])


def test_unmodified_hand_written_norm_is_compared_and_named_as_advise_names_it(exported):
    from ln_deploy.check import check_model
    from ln_deploy.convert.advisor import advise

    report = check_model(SPEC, exported, invariance=False)
    assert report.passed
    keys = [n["key"] for n in report.localisation["onnxrt-cpu"]["norms"]]
    assert keys == ["ln"]
    assert "compared 1 normalization" in report.console_table()
    assert [n.label for n in advise(exported).norms] == keys  # advise and check name the same modules


def test_localisation_that_compared_nothing_says_so(tmp_path):
    """The legacy exporter writes no module-path metadata: nothing can be aligned, and the report says
    that plainly (it used to open with "No normalization diverges beyond tolerance")."""
    from ln_deploy.check import check_model
    from ln_deploy.export import export_model

    path = export_model(SPEC, tmp_path / "legacy.onnx", exporter="legacy").path
    report = check_model(SPEC, path, invariance=False)
    assert report.localisation_line().startswith("localisation compared nothing")
    assert "module-path metadata" in report.localisation_line()
    md = report.to_markdown()
    assert "No normalization diverges" not in md and "Localisation compared nothing" in md
    assert "localisation compared nothing" in report.console_table()
