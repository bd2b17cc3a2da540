"""Sealing a parity certificate into a model folder (``parity.json`` beside ``config.pbtxt``).

``package`` seals what ``deploy`` certified: it adds the packaged file's name and sha256 and the
certificate's own hash (sha256 of its canonical JSON without that field), so ``ln-deploy verify``
detects a changed model file or an edited certificate. ``serve`` returns it in the model's metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FILENAME = "parity.json"
MAX_BYTES = 8 << 20


def certificate_hash(cert: dict) -> str:
    body = {k: v for k, v in cert.items() if k != "certificate_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def seal(cert: dict, model_file: Path, model_dir: Path) -> dict:
    from ..fileio import sha256_file

    out = dict(cert)
    out["model_file"] = Path(model_file).relative_to(model_dir).as_posix()
    out["model_sha256"] = sha256_file(model_file)
    out["certificate_sha256"] = certificate_hash(out)
    return out


def read_parity(model_dir: Path) -> dict | None:
    """The folder's certificate as a dict, or None when it has none or it is not a JSON object."""
    path = Path(model_dir) / FILENAME
    try:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
