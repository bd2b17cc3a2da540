"""Atomic output files and untrusted-file loading shared by every stage.

Outputs: written to a temporary beside the target and renamed only when the whole step succeeded,
with the mode a file created normally would get under the current umask (``mkstemp``/``mkdtemp``
create 0600/0700 and a rename keeps that: a Triton container running as another user could not read
the repository); never committed once SIGINT/SIGTERM was received (a fallback may have swallowed the
interrupt); a file already at the target is left as it was when the step fails. ``refuse_same_files``
refuses an output that is one of the command's inputs or another of its outputs.

ONNX inputs: refused by size and by the shape of their top-level protobuf fields before onnx reads
the file whole; then every string field must be UTF-8, every tensor's data must match its shape, and
external-data locations must be plain relative paths inside the model's folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from pathlib import Path

from .errors import BadInputError, CheckFailedError


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (models and engines can be gigabytes)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def normal_mode(directory: bool = False) -> int:
    """The mode ``open(path, "w")`` (or ``mkdir``) would give under the current umask: 0644/0755 under 022."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _commit_allowed(what) -> None:
    """No output is committed after an interrupt, even one a library caught and turned into an error."""
    from . import interrupts

    interrupts.raise_if_interrupted()


def _identity(path: str | os.PathLike):
    """(device, inode) of an existing path (links followed), else its resolved absolute path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        try:
            return ("path", os.path.realpath(path))
        except (OSError, ValueError):
            return ("path", os.path.abspath(str(path)))


def refuse_same_files(outputs: dict[str, str | os.PathLike], inputs: dict[str, str | os.PathLike]) -> None:
    """Refuse an output that is the same file as an input or as another output (``--report`` pointed
    at the model it describes, ``-o`` at the SPEC file, ``-o`` and ``--report`` at one path).

    Keys are what the user wrote (``-o/--output``), values the paths; compared by inode where the file
    exists (hard links and symlinks included), else by resolved path."""
    seen_out: dict = {}
    ins = {}
    for label, p in inputs.items():
        if p is not None and str(p):
            ins.setdefault(_identity(p), label)
    for label, p in outputs.items():
        if p is None or not str(p):
            continue
        ident = _identity(p)
        if ident in ins:
            raise BadInputError(f"{label} {str(p)[:200]} is the same file as the input {ins[ident]}: refusing to "
                                "overwrite an input")
        if ident in seen_out:
            raise BadInputError(f"{label} {str(p)[:200]} is the same file as {seen_out[ident]}: one file cannot "
                                "hold both")
        seen_out[ident] = label


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

    After a failure (or once SIGINT/SIGTERM was received) neither a partial file nor the temporary
    is left, and a file already at ``path`` is left as it was: it is replaced only by a successful
    run. The committed file gets the umask's normal mode. (The CLI refuses an output that is one of
    the command's inputs before anything runs: ``refuse_same_files``.)
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
        _commit_allowed(p)
        try:
            os.chmod(tmp_path, normal_mode())
            os.replace(tmp_path, p)
        except OSError as e:
            raise BadInputError(f"cannot write {p}: {e.strerror or type(e).__name__}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def make_temp_dir(parent: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """A temporary folder in ``parent`` with the mode ``mkdir`` would give (``mkdtemp`` makes it 0700,
    and it keeps that mode when renamed into place)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, normal_mode(directory=True))
    return tmp


def fix_modes(root: str | os.PathLike) -> None:
    """Give every file and folder under ``root`` (included) the umask's normal mode; executables keep
    their execute bits (shared libraries)."""
    root = Path(root)
    dmode, fmode = normal_mode(True), normal_mode(False)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, dmode)
        else:
            os.chmod(p, dmode if os.stat(p).st_mode & 0o111 else fmode)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary folder beside ``path``; on success it becomes ``path`` (renamed whole when
    ``path`` does not exist; its files moved in when it is an existing folder, replacing only files of
    the same names: this command's own earlier output). A failure leaves no partial folder and no
    temporary."""
    import shutil

    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.exists() and not target.is_dir():
        raise BadInputError(f"{target} exists and is not a directory")
    try:
        tmp = make_temp_dir(parent, prefix=f".{target.name}.")
    except OSError as e:
        raise BadInputError(f"cannot write {target}: {e.strerror or type(e).__name__}") from None
    try:
        yield tmp
        _commit_allowed(target)
        fix_modes(tmp)
        try:
            os.rename(tmp, target)  # atomic when target does not exist
            return
        except OSError:
            if not target.is_dir():
                raise
        for f in tmp.iterdir():
            if (target / f.name).is_dir() and not (target / f.name).is_symlink():
                raise BadInputError(f"{target / f.name} is a directory: not replacing it")
        for f in tmp.iterdir():
            os.replace(f, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_onnx_atomic(model, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Save an ``onnx.ModelProto`` atomically. Models over 1.8 GB get one external-data file beside them."""
    import onnx

    p = check_output_path(path)
    try:
        check_tensor_data(model, "the model")
    except BadInputError as e:
        raise CheckFailedError(f"refusing to write a malformed model to {p}: {e}") from None
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
    scan_onnx_file(p)  # size and top-level structure, before onnx reads the whole file into memory
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError, MemoryError) as e:
        raise BadInputError(f"{p} is not a readable ONNX model ({type(e).__name__}: {_first_line(e)})") from None
    if not model.graph.node and not model.graph.output:
        raise BadInputError(f"{p} is not an ONNX model (empty or truncated graph)")
    if not model.graph.output:
        raise BadInputError(f"{p}: the graph has no outputs")
    check_strings(model, p)
    check_model_declarations(model, p)
    check_external_data_paths(model, p.parent)
    check_tensor_data(model, p)
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
    for role, vis in (("input", model.graph.input), ("output", model.graph.output)):
        names = [vi.name for vi in vis]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BadInputError(f"{where}: the graph declares {role} name(s) {', '.join(map(repr, dup))} more than once")
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
        if not isinstance(loc, str) or any(ord(c) < 32 or ord(c) == 127 for c in loc):
            raise BadInputError(f"tensor {t.name!r}: external data path {str(loc)[:100]!r} holds a NUL or "
                                "control character; refusing it")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc.split("/")[0]:
            raise BadInputError(f"tensor {t.name!r}: external data path {loc!r} is absolute; refusing it")
        target = (base / loc).resolve()
        if base != target and base not in target.parents:
            raise BadInputError(f"tensor {t.name!r}: external data path {loc!r} points outside the model's folder")
        if not target.is_file():
            raise BadInputError(f"tensor {t.name!r}: external data file {loc!r} is missing or not a file")


_WIRE_TYPES = {0, 1, 2, 5}  # varint, 64-bit, length-delimited, 32-bit (3/4, groups, are not in onnx.proto)


def _model_fields() -> dict[int, int]:
    """ModelProto's field numbers -> wire type, from the installed onnx's descriptor."""
    import onnx
    from google.protobuf.descriptor import FieldDescriptor as F

    fixed64 = {F.TYPE_DOUBLE, F.TYPE_FIXED64, F.TYPE_SFIXED64}
    fixed32 = {F.TYPE_FLOAT, F.TYPE_FIXED32, F.TYPE_SFIXED32}
    length = {F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE}
    return {f.number: 2 if f.type in length else 1 if f.type in fixed64 else 5 if f.type in fixed32 else 0
            for f in onnx.ModelProto.DESCRIPTOR.fields}


PROTOBUF_LIMIT = 2**31 - 1  # protobuf cannot parse a message of 2 GiB or more
_MAX_TOP_LEVEL_FIELDS = 100_000


def scan_onnx_file(path: Path) -> None:
    """Refuse a file that cannot be an ONNX model without reading it: over protobuf's 2 GiB limit, or
    whose top-level fields are not ModelProto's (a file of zeros starts with field 0; a truncated one
    declares a field longer than what is left). Reads a few bytes per top-level field."""
    try:
        size = path.stat().st_size
        if size >= PROTOBUF_LIMIT:
            raise BadInputError(f"{path} is {size / 2**30:.1f} GiB: an ONNX file must be under protobuf's 2 GiB "
                                "(larger models keep their weights in external data)")
        known = _model_fields()
        with open(path, "rb") as f:
            pos, fields, graph = 0, 0, False
            while pos < size:
                tag, pos = _read_varint(f, pos, size, path)
                number, wire = tag >> 3, tag & 7
                # a field newer than the installed onnx is fine; a wrong wire type or field 0 never is
                if number < 1 or wire not in _WIRE_TYPES or known.get(number, wire) != wire:
                    raise BadInputError(f"{path} is not a readable ONNX model (byte {pos}: protobuf field {number} wire "
                                        f"type {wire} is not one of ModelProto's)")
                if wire == 0:
                    _, pos = _read_varint(f, pos, size, path)
                elif wire in (1, 5):
                    pos += 8 if wire == 1 else 4
                    if pos > size:
                        raise BadInputError(f"{path} is not a readable ONNX model (truncated at byte {size})")
                    f.seek(pos)
                else:
                    length, pos = _read_varint(f, pos, size, path)
                    if length > size - pos:
                        raise BadInputError(f"{path} is not a readable ONNX model (truncated: field {number} "
                                            f"declares {length} bytes, {size - pos} remain)")
                    pos += length
                    f.seek(pos)
                graph |= number == 7
                fields += 1
                if fields > _MAX_TOP_LEVEL_FIELDS:
                    raise BadInputError(f"{path} is not a plausible ONNX model (over {_MAX_TOP_LEVEL_FIELDS} "
                                        "top-level fields)")
    except OSError as e:
        raise BadInputError(f"{str(path)[:200]!r} cannot be read: {e.strerror or type(e).__name__}") from None
    if size and not graph:
        raise BadInputError(f"{path} is not a readable ONNX model (it has no graph)")


def _read_varint(f, pos: int, size: int, path) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise BadInputError(f"{path} is not a readable ONNX model (truncated at byte {pos})")
        pos += 1
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise BadInputError(f"{path} is not a readable ONNX model (a malformed varint at byte {pos})")


def check_strings(model, where) -> None:
    """Every string field must be UTF-8: protobuf's proto2 parser hands invalid bytes back as ``bytes``
    (a doc_string, producer_name, metadata value, node or tensor name), and onnx_ir, the checker and
    JSON reports fail on them later with a traceback."""
    from google.protobuf.descriptor import FieldDescriptor

    string, message = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
    stack = [(model, "model")]
    while stack:
        msg, at = stack.pop()
        for fd, value in msg.ListFields():
            if fd.type == string:
                values = value if _repeated(fd) else (value,)
                for v in values:
                    if not isinstance(v, str):
                        raise BadInputError(f"{where}: {at}.{fd.name} is not valid UTF-8")
            elif fd.type == message:
                if _repeated(fd):
                    stack.extend((m, f"{at}.{fd.name}[{i}]") for i, m in enumerate(value))
                else:
                    stack.append((value, f"{at}.{fd.name}"))


def _repeated(fd) -> bool:
    rep = getattr(fd, "is_repeated", None)
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


_TYPED_FIELDS = {  # TensorProto data type -> (field holding it when not raw_data, values per element)
    1: ("float_data", 1), 2: ("int32_data", 1), 3: ("int32_data", 1), 4: ("int32_data", 1), 5: ("int32_data", 1),
    6: ("int32_data", 1), 7: ("int64_data", 1), 8: ("string_data", 1), 9: ("int32_data", 1), 10: ("int32_data", 1),
    11: ("double_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1), 14: ("float_data", 2),
    15: ("double_data", 2), 16: ("int32_data", 1),
}
_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
         16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2}


def check_tensor_data(model, where) -> None:
    """Every tensor (initializers, Constant attributes, subgraphs) holds as much data as its shape says:
    raw_data of dims x element size, or that many typed values; external data no shorter than declared.
    ONNX Runtime cannot open a model that breaks this, and the ONNX checker lets it through."""
    for t in _all_tensors(model):
        if t.data_location == 1:  # EXTERNAL: the length key, when given, must fit the shape
            info = {e.key: e.value for e in t.external_data}
            want = _tensor_bytes(t)
            if want is not None and info.get("length", "").isdigit() and int(info["length"]) < want:
                raise BadInputError(f"{where}: tensor {t.name!r} declares {info['length']} bytes of external data, "
                                    f"its shape {list(t.dims)} needs {want}")
            continue
        if any(d < 0 for d in t.dims):
            raise BadInputError(f"{where}: tensor {t.name!r} has a negative dimension {list(t.dims)}")
        n = 1
        for d in t.dims:
            n *= d
        if t.HasField("raw_data"):
            want = _tensor_bytes(t)
            if want is not None and len(t.raw_data) != want:
                raise BadInputError(f"{where}: tensor {t.name!r} holds {len(t.raw_data)} bytes of raw data, its "
                                    f"shape {list(t.dims)} needs {want}")
            continue
        field, per = _TYPED_FIELDS.get(t.data_type, (None, 1))
        if field is None:  # 4-bit and 8-bit float types pack into int32_data; checked by raw size only
            continue
        have = len(getattr(t, field))
        if have != n * per and not (n == 0 and have == 0):
            raise BadInputError(f"{where}: tensor {t.name!r} holds {have} values in {field}, its shape "
                                f"{list(t.dims)} needs {n * per}")


def _tensor_bytes(t) -> int | None:
    bits = _BITS.get(t.data_type)
    if bits is None:
        return None
    n = 1
    for d in t.dims:
        n *= d
    return (n * bits + 7) // 8


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__
