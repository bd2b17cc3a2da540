"""The work folder's manifest: what each stage ran on, by content hash, so a second run skips it.

A stage's *key* is the sha256 of everything it reads: its input artifact's bytes, the options it
uses, the SPEC's source files, the checkpoint and the tool versions. A stage is skipped when its key
equals the recorded one, it passed, and its artifacts are still there with the recorded hashes; once
one stage reruns, every later stage reruns (its input changed or may have).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import BadInputError
from ..fileio import sha256_file

MANIFEST = "deploy.json"
FORMAT = "ln_deploy.deploy/1"
_MAX_BYTES = 4 << 20


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def spec_sources(spec: str) -> dict[str, str]:
    """sha256 of the SPEC's Python file and the .py files beside it (a SPEC file often imports its
    siblings: models/transformer.py imports models/_layers.py). A ``package.module:NAME`` SPEC hashes
    the module's file the same way; a module without a file (built in) hashes its name only."""
    import importlib.util

    target = spec.rpartition(":")[0]
    path: Path | None
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target)
    else:
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            found = None
        path = Path(found.origin) if found is not None and found.origin and found.origin.endswith(".py") else None
    if path is None or not path.is_file():
        return {}
    files = sorted({path.resolve(), *(p.resolve() for p in path.parent.glob("*.py") if p.is_file())})
    return {p.name: sha256_file(p) for p in files}


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("ln_deploy", "torch", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "polygraphy", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class Manifest:
    """``WORKDIR/deploy.json``: {format, stages: {stage: {key, status, seconds, summary, main, artifacts: {path: sha}}}}
    (``main``: the stage's artifact the next stage reads; paths relative to WORKDIR)."""

    def __init__(self, workdir: Path, data: dict | None = None):
        self.workdir = workdir
        self.data = data or {"format": FORMAT, "stages": {}}

    @classmethod
    def load(cls, workdir: Path) -> "Manifest":
        path = workdir / MANIFEST
        if not path.is_file():
            return cls(workdir)
        try:
            if path.stat().st_size > _MAX_BYTES:
                raise ValueError("too large")
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("stages"), dict):
                raise ValueError("not a deploy manifest")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise BadInputError(f"{path} is not a readable deploy manifest ({e}); remove it or use another WORKDIR") from None
        return cls(workdir, data)

    def fresh(self, stage: str, key: str) -> bool:
        rec = self.data["stages"].get(stage)
        if not isinstance(rec, dict) or rec.get("key") != key or rec.get("status") != "passed":
            return False
        for rel, digest in (rec.get("artifacts") or {}).items():
            p = self.path_of(rel)
            if p is None or not p.is_file() or sha256_file(p) != digest:
                return False
        return True

    def record(self, stage: str, key: str, status: str, seconds: float, artifacts: list[Path], summary: dict) -> None:
        main = artifacts[0] if artifacts else None
        self.data["stages"][stage] = {
            "key": key, "status": status, "seconds": round(seconds, 3), "summary": summary,
            "main": self.rel(main) if main is not None else None,
            "artifacts": {self.rel(p): sha256_file(p) for p in artifacts if p.is_file()},
        }

    def forget_from(self, stages: list[str]) -> None:
        for s in stages:
            self.data["stages"].pop(s, None)

    def get(self, stage: str) -> dict:
        return self.data["stages"].get(stage) or {}

    def rel(self, p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(self.workdir.resolve()))
        except ValueError:
            return str(Path(p).resolve())

    def path_of(self, rel: str) -> Path | None:
        p = Path(rel)
        return p if p.is_absolute() else self.workdir / p

    def save(self) -> None:
        from ..fileio import write_text_atomic

        write_text_atomic(self.workdir / MANIFEST, json.dumps(self.data, indent=2, sort_keys=True) + "\n")
