"""Class 1, output safety: a command never deletes or replaces a file it did not create; an output
that is one of its inputs (or another output) is refused before anything runs; a report folder
appears whole or not at all; ``package --force`` never leaves a ``.NAME.old-PID`` behind."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import assert_refused, run_cli


@pytest.fixture
def model(models, tmp_path):
    p = tmp_path / "m.onnx"
    shutil.copyfile(models / "good.onnx", p)
    return p


@pytest.mark.parametrize("argv_of, command, needle", [
    (lambda m, t: ["fuse", m, "-o", t / "o.onnx", "--report", m], "fuse", "same file as the input"),
    (lambda m, t: ["fuse", m, "-o", t / "o.onnx", "--report", t / "o.onnx"], "fuse", "same file as -o/--output"),
    (lambda m, t: ["fuse", m, "-o", m], "fuse", "same file as the input"),
    (lambda m, t: ["convert", m, "-o", t / "o.onnx", "--precision", "fp16", "--report", m], "convert",
     "same file as the input"),
    (lambda m, t: ["convert", m, "-o", t / "o.onnx", "--precision", "fp16", "--report", t / "o.onnx"], "convert",
     "same file as -o/--output"),
    (lambda m, t: ["advise", m, "--report", m], "advise", "same file as the input"),
    (lambda m, t: ["build", m, "-o", m, "--dry-run"], "build", "same file as the input"),
], ids=["fuse-report-is-input", "fuse-report-is-output", "fuse-output-is-input", "convert-report-is-input",
        "convert-report-is-output", "advise-report-is-input", "build-output-is-input"])
def test_output_that_is_an_input_is_refused(model, tmp_path, unchanged, argv_of, command, needle):
    unchanged.start()
    rc, _, err = run_cli(*argv_of(model, tmp_path))
    assert_refused(rc, err, command, needle)


def test_build_sidecar_that_is_the_input_is_refused(model, tmp_path, unchanged):
    """``build -o E`` also writes ``E.json``: that derived output may not be the model either."""
    src = tmp_path / "e.json"
    os.replace(model, src)
    unchanged.start()
    rc, _, err = run_cli("build", src, "-o", tmp_path / "e", "--dry-run")
    assert_refused(rc, err, "build", "sidecar", "same file as the input")


def test_output_through_a_symlink_to_the_input_is_refused(model, tmp_path, unchanged):
    os.symlink(model, tmp_path / "alias.onnx")
    os.link(model, tmp_path / "hard.onnx")
    unchanged.start()
    for out in ("alias.onnx", "hard.onnx"):
        rc, _, err = run_cli("fuse", model, "-o", tmp_path / "o.onnx", "--report", tmp_path / out)
        assert_refused(rc, err, "fuse", "same file as the input")


def test_export_over_its_own_spec_file_is_refused(models, tmp_path, unchanged):
    spec = tmp_path / "tiny.py"
    shutil.copyfile(models / "tiny.py", spec)
    unchanged.start()
    rc, _, err = run_cli("export", f"{spec}:raises", "-o", spec)
    assert_refused(rc, err, "export", "same file as the input SPEC's file")


def test_export_over_its_checkpoint_is_refused(models, tmp_path, unchanged):
    import torch

    ckpt = tmp_path / "w.pt"
    torch.save({"ln.weight": torch.ones(9), "ln.bias": torch.zeros(9)}, ckpt)  # mismatched on purpose
    unchanged.start()
    rc, _, err = run_cli("export", f"{models}/tiny.py:good", "--checkpoint", ckpt, "-o", ckpt)
    assert_refused(rc, err, "export", "same file as the input --checkpoint")


def test_failed_export_leaves_the_file_at_the_output_path(models, tmp_path, unchanged):
    """The file at -o is not the command's to delete when it fails (it used to be unlinked)."""
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"someone's file")
    unchanged.start()
    rc, _, err = run_cli("export", f"{models}/tiny.py:raises", "-o", out)
    assert_refused(rc, err, "export", "factory boom")
    assert out.read_bytes() == b"someone's file"


def test_report_folder_is_whole_or_absent(tmp_path):
    """fileio.atomic_folder (check's report): a failure mid-way leaves no folder and no temporary; a
    success renames the whole folder in, with the umask's modes; an existing folder keeps its other files."""
    from ln_deploy.fileio import atomic_folder

    target = tmp_path / "rep"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "report.json").write_text("{}")
            raise RuntimeError("the plot failed")
    assert list(tmp_path.iterdir()) == []
    old = os.umask(0o022)
    try:
        with atomic_folder(target) as tmp:
            (tmp / "report.json").write_text("{}")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    assert (target.stat().st_mode & 0o777, (target / "report.json").stat().st_mode & 0o777) == (0o755, 0o644)
    (target / "notes.txt").write_text("mine")
    with atomic_folder(target) as tmp:
        (tmp / "report.json").write_text('{"run": 2}')
    assert (target / "report.json").read_text() == '{"run": 2}' and (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_check_that_fails_writes_no_report_folder(models, tmp_path, unchanged):
    unchanged.start()
    rc, _, err = run_cli("check", f"{models}/tiny.py:good", "--onnx", models / "good.onnx", "--batch-size",
                         "1000000000", "--report-dir", tmp_path / "rep", "--no-plots")
    assert_refused(rc, err, "check", "over the limit")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("what", ["symlink", "file", "dangling symlink"])
def test_package_force_never_replaces_a_link_or_a_file(model, tmp_path, what):
    repo = tmp_path / "repo"
    repo.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    if what == "symlink":
        os.symlink(elsewhere, repo / "m")
    elif what == "file":
        (repo / "m").write_text("a plain file")
    else:
        os.symlink(tmp_path / "nowhere", repo / "m")
    before = sorted(os.listdir(repo)), os.readlink(repo / "m") if (repo / "m").is_symlink() else None
    rc, _, err = run_cli("package", model, "--repo", repo, "--name", "m", "--force")
    assert_refused(rc, err, "package", "is not a model folder")
    assert (sorted(os.listdir(repo)), os.readlink(repo / "m") if (repo / "m").is_symlink() else None) == before
    assert not any(p.name.startswith(".m.") for p in repo.iterdir())
    assert (elsewhere / "keep.txt").read_text() == "keep"


def test_package_force_replaces_its_own_folder_without_leftovers(model, tmp_path):
    repo = tmp_path / "repo"
    for _ in range(2):
        rc, _, err = run_cli("package", model, "--repo", repo, "--name", "m", "--force")
        assert rc == 0, err
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


@pytest.mark.parametrize("name", ["m\n", "m\r", "m "])
def test_package_name_is_matched_in_full(model, tmp_path, unchanged, name):
    unchanged.start()
    rc, _, err = run_cli("package", model, "--repo", tmp_path / "repo", "--name", name)
    assert_refused(rc, err, "package", "model name")
