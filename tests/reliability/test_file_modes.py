"""Class 2, permissions: what a command writes gets the mode a normally created file would get under
the current umask (0644 files, 0755 folders under 022): temporaries made by mkstemp/mkdtemp are 0600/
0700 and kept that mode through the rename, so Triton's non-root container user (USER 10001) could
not read a repository `package` wrote. The packaged repository is then served as another,
unprivileged user where this machine allows it (root, and a `nobody` who can run this Python), else
as this user after the modes are checked; either way the answer is compared with an fp64 reference."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_outputs_get_the_umask_mode(models, tmp_path, mask, file_mode, dir_mode):
    with umask(mask):
        rc, _, err = run_cli("fuse", models / "good.onnx", "-o", tmp_path / "f.onnx", "--report", tmp_path / "f.json")
        assert rc == 0, err
        rc, _, err = run_cli("package", models / "good.onnx", "--repo", tmp_path / "repo", "--name", "m")
        assert rc == 0, err
    assert stat.S_IMODE((tmp_path / "f.onnx").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == file_mode
    modes = _modes(tmp_path / "repo" / "m")
    assert modes == {".": dir_mode, "config.pbtxt": file_mode, "1": dir_mode, "1/model.onnx": file_mode}, modes


def _other_user():
    """(uid, gid) of an unprivileged user who can run this Python, or None (not root, or no such user)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    try:
        ok = subprocess.run([sys.executable, "-c", "import ln_deploy, onnxruntime"], user=pw.pw_uid,
                            group=pw.pw_gid, extra_groups=[], cwd="/", capture_output=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (pw.pw_uid, pw.pw_gid) if ok else None


def test_packaged_repository_is_served_by_another_user(models):
    """Package under umask 022 into a folder every user may traverse, then `ln-deploy serve REPO` as
    `nobody` (or, where that cannot run here, as this user after asserting the repository is readable
    by all: every folder 0755, every file 0644), and compare one inference with an fp64 LayerNorm."""
    base = Path(tempfile.mkdtemp(prefix="ln_deploy_modes_"))
    try:
        os.chmod(base, 0o755)  # the test's own folder: only the package's modes are under test
        with umask(0o022):
            rc, _, err = run_cli("package", models / "good.onnx", "--repo", base / "repo", "--name", "m")
        assert rc == 0, err
        modes = _modes(base / "repo")
        assert all(m == (0o755 if (base / "repo" / rel).is_dir() else 0o644) for rel, m in modes.items()), modes
        user = _other_user()  # None here means: served as this user; the modes above are what proves it
        cache = base / "cache"
        cache.mkdir()
        os.chmod(cache, 0o777)
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "LN_DEPLOY_CACHE_DIR": str(cache),
               "HOME": str(cache)}
        kwargs = dict(user=user[0], group=user[1], extra_groups=[]) if user else {}
        proc = subprocess.Popen([sys.executable, "-m", "ln_deploy", "serve", str(base / "repo"), "--host",
                                 "127.0.0.1", "--port", "0"], cwd="/", env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            port, lines, deadline = None, [], time.time() + 120
            while time.time() < deadline and port is None:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line)
                m = re.search(r"serving \d+ model\(s\) on http://127\.0\.0\.1:(\d+)", line)
                port = int(m.group(1)) if m else None
            assert port is not None, "server did not start:\n" + "".join(lines)
            x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
            body = json.dumps({"inputs": [{"name": "x", "shape": [2, 4, 8], "datatype": "FP32",
                                           "data": x.ravel().tolist()}]}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/m/infer", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                out = json.loads(r.read())["outputs"][0]
            y = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
            x64 = x.astype(np.float64)
            ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
            assert np.abs(y - ref).max() < 1e-5
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)
