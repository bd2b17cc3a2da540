"""Atomic output files and untrusted-file loading shared by every stage."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import BadInputError


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate that ``path`` can be written: its directory exists, is a directory and really takes a
    new file (a probe file is created and removed: ``os.access`` says yes to root on read-only mounts
    and in /proc), and ``path`` is not a directory or a special file (a device such as /dev/null, a
    FIFO, a socket), which the final rename would replace."""
    if str(path) == "":
        raise BadInputError("output path is empty")
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        if not parent.exists():
            raise BadInputError(f"output directory does not exist: {parent}")
        if not parent.is_dir():
            raise BadInputError(f"output directory is not a directory: {parent}")
        if p.is_dir():
            raise BadInputError(f"output path is a directory: {p}")
        if (p.exists() or p.is_symlink()) and not p.is_file():
            raise BadInputError(f"output path exists and is not a regular file: {p}")
    except OSError as e:  # e.g. a name too long for the file system
        raise BadInputError(f"output path {str(p)[:200]!r} cannot be used: {e.strerror or type(e).__name__}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BadInputError(f"output directory is not writable: {parent} ({e.strerror or type(e).__name__})") from None
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    After a failure neither a partial file nor the temporary is left; a file already at ``path``
    is left as it was (it may be the command's own input: ``fuse m.onnx -o m.onnx``). ``export``
    removes a stale model itself, since its output is never one of its inputs.
    """
    p = check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix or ".tmp", dir=p.parent)
    except OSError as e:
        raise BadInputError(f"cannot write {p}: {e.strerror or type(e).__name__}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, p)
        except OSError as e:
            raise BadInputError(f"cannot write {p}: {e.strerror or type(e).__name__}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_onnx_atomic(model, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Save an ``onnx.ModelProto`` atomically. Models over 1.8 GB get one external-data file beside them."""
    import onnx

    p = check_output_path(path)
    if external_data is None:
        external_data = model.ByteSize() > 1_800_000_000 if _can_bytesize(model) else True
    if not external_data:
        with atomic_output(p) as tmp:
            onnx.save_model(model, str(tmp))
        return p
    data_name = p.name + ".data"
    with atomic_output(p.parent / data_name) as tmp_data, atomic_output(p) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=tmp_data.name, size_threshold=1024)
        # onnx wrote the tensors to tmp_data's name; point the model at the final name.
        m = onnx.load_model(str(tmp), load_external_data=False)
        for t in _all_tensors(m):
            for e in t.external_data:
                if e.key == "location":
                    e.value = data_name
        onnx.save_model(m, str(tmp))
    return p


def _can_bytesize(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf refuses > 2 GB
        return False


def _all_tensors(model):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def load_onnx(path: str | os.PathLike, *, check: bool = True, load_external_data: bool = True):
    """Load an ONNX model from an untrusted file.

    Raises BadInputError (one line) for a missing file, something that is not ONNX, a truncated
    file, a model the ONNX checker rejects, or external data that points outside the model's folder.
    """
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    try:
        if not p.exists():
            raise BadInputError(f"no such file: {p}")
        if not p.is_file():
            raise BadInputError(f"not a file: {p}")
    except OSError as e:  # e.g. a name too long for the file system
        raise BadInputError(f"{str(p)[:200]!r} cannot be read: {e.strerror or type(e).__name__}") from None
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise BadInputError(f"{p} is not a readable ONNX model ({type(e).__name__}: {_first_line(e)})") from None
    if not model.graph.node and not model.graph.output:
        raise BadInputError(f"{p} is not an ONNX model (empty or truncated graph)")
    if not model.graph.output:
        raise BadInputError(f"{p}: the graph has no outputs")
    check_model_declarations(model, p)
    check_external_data_paths(model, p.parent)
    if load_external_data:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise BadInputError(f"{p}: cannot read its external data ({_first_line(e)})") from None
    if check:
        try:
            onnx.checker.check_model(model if load_external_data else str(p), full_check=False)
        except onnx.checker.ValidationError as e:
            raise BadInputError(f"{p} fails the ONNX checker: {_first_line(e)}") from None
        except ValueError as e:  # > 2 GB in memory: check by path instead
            try:
                onnx.checker.check_model(str(p))
            except onnx.checker.ValidationError as e2:
                raise BadInputError(f"{p} fails the ONNX checker: {_first_line(e2)}") from None
    return model


def check_model_declarations(model, where) -> None:
    """What the ONNX checker (without full_check) lets through: an opset newer than the installed onnx
    knows, and negative static dims on graph inputs or outputs."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > newest:
            raise BadInputError(f"{where}: opset {o.version} is newer than the installed onnx supports "
                                f"(up to {newest})")
    for vi in list(model.graph.input) + list(model.graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value < 0:
                raise BadInputError(f"{where}: {vi.name!r} declares size {d.dim_value} on axis {k}")


def check_external_data_paths(model, base_dir: str | os.PathLike) -> None:
    """Refuse external-data locations that are absolute or escape ``base_dir`` (onnx_ir does not check)."""
    base = Path(base_dir).resolve()
    for t in _all_tensors(model):
        if t.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None:
            raise BadInputError(f"tensor {t.name!r} has external data without a location")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc.split("/")[0]:
            raise BadInputError(f"tensor {t.name!r}: external data path {loc!r} is absolute; refusing it")
        target = (base / loc).resolve()
        if base != target and base not in target.parents:
            raise BadInputError(f"tensor {t.name!r}: external data path {loc!r} points outside the model's folder")
        if not target.is_file():
            raise BadInputError(f"tensor {t.name!r}: external data file {loc!r} is missing or not a file")


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__
