"""Bounded readers for untrusted array and JSON files (.npz, .npy, engine sidecars).

Memory is bounded by what a file declares, checked before anything is allocated or inflated: a
``.npy`` header's shape x dtype against ``max_array_bytes()`` and against the bytes the file really
holds; a ``.npz`` member's declared size and its array header before a byte of it is inflated (1 MiB
of zeros deflates from 1 GiB). Object arrays (pickles) are refused (``allow_pickle=False``). Every
malformed file -- not a zip, a bad CRC, a truncated member, a plain ``.npy`` where a ``.npz`` is
expected -- is one ``BadInputError`` line. Nothing here imports a stage.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from pathlib import Path

from .errors import BadInputError

ENV_MAX_ARRAY_BYTES = "LN_DEPLOY_MAX_ARRAY_BYTES"
DEFAULT_MAX_ARRAY_BYTES = 512 * 2**20  # per file, all arrays together; inputs for a CPU check or calibration
MAX_MEMBERS = 10_000
MAX_HEADER_BYTES = 10_000  # numpy's own default limit for a .npy header
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
DEFAULT_MAX_JSON_BYTES = 16 * 2**20
DEFAULT_MAX_JSON_DEPTH = 64


def max_array_bytes() -> int:
    """The most array bytes one file may declare: ``$LN_DEPLOY_MAX_ARRAY_BYTES`` or 512 MiB."""
    raw = os.environ.get(ENV_MAX_ARRAY_BYTES, "")
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_MAX_ARRAY_BYTES
    return value if value > 0 else DEFAULT_MAX_ARRAY_BYTES


def check_allocation(shape, itemsize: int, what: str, limit: int | None = None) -> int:
    """Refuse an array of ``shape`` x ``itemsize`` bytes above ``limit`` (default ``max_array_bytes()``)
    before numpy tries to allocate it (``check --batch-size 1000000000`` asked for 238 GiB)."""
    limit = max_array_bytes() if limit is None else limit
    n = itemsize
    for d in shape:
        if not isinstance(d, int) or d < 0:
            raise BadInputError(f"{what}: dimension {d!r} is not a size")
        n *= d
    if n > limit:
        raise BadInputError(f"{what}: shape {list(shape)} needs {_size(n)}, over the limit of {_size(limit)} "
                            f"(set {ENV_MAX_ARRAY_BYTES} to raise it)")
    return n


def load_npz(path: str | os.PathLike, *, limit: int | None = None) -> dict:
    """The arrays of a ``.npz`` file, ``{name: ndarray}`` in file order, read within ``limit`` bytes."""
    import numpy as np

    p = Path(path)
    limit = max_array_bytes() if limit is None else limit
    _require_file(p)
    head = _head(p)
    if head.startswith(NPY_MAGIC):
        raise BadInputError(f"{p} is a single .npy array, not a .npz archive (save inputs with numpy.savez)")
    if not head.startswith(ZIP_MAGICS):
        raise BadInputError(f"{p} is not a .npz archive (no zip header)")
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BadInputError(f"{p}: {len(infos)} members, more than {MAX_MEMBERS}")
            arrays, total = {}, 0
            for info in infos:
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if info.flag_bits & 0x1:
                    raise BadInputError(f"{p}: member {key!r} is encrypted")
                if key in arrays:
                    raise BadInputError(f"{p}: member {key!r} appears twice")
                with z.open(info) as f:
                    shape, dtype, fortran, header_len = _read_npy_header(f, f"{p}: member {key!r}")
                    nbytes = check_allocation(shape, dtype.itemsize, f"{p}: member {key!r}", limit - total)
                    if info.file_size != header_len + nbytes:
                        raise BadInputError(f"{p}: member {key!r} is truncated or corrupt (its header declares "
                                            f"{header_len + nbytes} bytes, the archive {info.file_size})")
                    total += nbytes
                    arrays[key] = _read_data(f, shape, dtype, fortran, nbytes, f"{p}: member {key!r}")
            return arrays
    except BadInputError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, NotImplementedError,
            RuntimeError) as e:
        raise BadInputError(f"{p} is not a readable .npz archive ({type(e).__name__}: {_first_line(e)})") from None


def load_npy(path: str | os.PathLike, *, limit: int | None = None):
    """One array from a ``.npy`` file, its header checked against ``limit`` and the file's size first."""
    p = Path(path)
    limit = max_array_bytes() if limit is None else limit
    _require_file(p)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise BadInputError(f"{p} is not a .npy file (no NumPy header)")
            f.seek(0)
            shape, dtype, fortran, header_len = _read_npy_header(f, str(p))
            nbytes = check_allocation(shape, dtype.itemsize, str(p), limit)
            if size != header_len + nbytes:
                raise BadInputError(f"{p} is truncated or corrupt (its header declares {header_len + nbytes} "
                                    f"bytes, the file has {size})")
            return _read_data(f, shape, dtype, fortran, nbytes, str(p))
    except BadInputError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise BadInputError(f"{p} is not a readable .npy file ({type(e).__name__}: {_first_line(e)})") from None


def load_arrays(path: str | os.PathLike, *, limit: int | None = None) -> dict:
    """``load_npz`` for a ``.npz``; a lone ``.npy`` file is refused with a clear line by ``load_npz``."""
    return load_npz(path, limit=limit)


def _read_npy_header(f, where: str):
    """(shape, dtype, fortran_order, bytes before the data) of the .npy stream ``f``, refusing object
    dtypes (they unpickle) and headers over MAX_HEADER_BYTES."""
    import numpy as np
    from numpy.lib import format as npformat

    magic = f.read(len(NPY_MAGIC) + 2)
    if len(magic) < len(NPY_MAGIC) + 2 or not magic.startswith(NPY_MAGIC):
        raise BadInputError(f"{where} is not a NumPy array (.npy)")
    version = (magic[-2], magic[-1])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise BadInputError(f"{where}: unknown .npy format version {version[0]}.{version[1]}")
    len_bytes = 2 if version == (1, 0) else 4
    raw_len = f.read(len_bytes)
    if len(raw_len) != len_bytes:
        raise BadInputError(f"{where} is truncated (in its .npy header)")
    header_len = int.from_bytes(raw_len, "little")
    if header_len > MAX_HEADER_BYTES:
        raise BadInputError(f"{where}: a .npy header of {header_len} bytes (over {MAX_HEADER_BYTES})")
    header = f.read(header_len)
    if len(header) != header_len:
        raise BadInputError(f"{where} is truncated (in its .npy header)")
    try:
        import ast

        d = ast.literal_eval(header.decode("utf-8" if version == (3, 0) else "latin1"))
        if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
            raise ValueError("the header is not a {descr, fortran_order, shape} dict")
        shape, fortran, dtype = d["shape"], d["fortran_order"], npformat.descr_to_dtype(d["descr"])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise BadInputError(f"{where}: malformed .npy header ({_first_line(e)})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise BadInputError(f"{where} holds Python objects (dtype {dtype}), which load only by unpickling: "
                            "refused (allow_pickle=False)")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise BadInputError(f"{where}: malformed .npy shape {shape!r}")
    return shape, dtype, bool(fortran), len(magic) + len_bytes + header_len


def _read_data(f, shape, dtype, fortran: bool, nbytes: int, where: str):
    """Read exactly ``nbytes`` into one buffer (one allocation, writable), then demand the end of the
    stream: a zip member verifies its CRC there."""
    import numpy as np

    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:  # chunked: ZipExtFile.readinto would read() the whole rest into a second copy
        chunk = f.read(min(nbytes - got, 16 * 2**20))
        if not chunk:
            raise BadInputError(f"{where} is truncated ({got} of {nbytes} data bytes)")
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    if f.read(1):
        raise BadInputError(f"{where} holds more bytes than its header declares")
    arr = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize if dtype.itemsize else 0)
    return arr.reshape(shape, order="F" if fortran else "C")


def load_json(path: str | os.PathLike, what: str = "", *, max_bytes: int = DEFAULT_MAX_JSON_BYTES,
              max_depth: int = DEFAULT_MAX_JSON_DEPTH):
    """A JSON document from an untrusted file: at most ``max_bytes``, nested at most ``max_depth`` deep
    (100k nested lists made json's decoder raise RecursionError), UTF-8. One line on any failure."""
    p = Path(path)
    label = what or str(p)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise BadInputError(f"{label}: {_size(size)} of JSON, over the limit of {_size(max_bytes)}")
        text = p.read_bytes().decode("utf-8")
    except BadInputError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{label}: cannot be read as UTF-8 JSON ({_first_line(e)})") from None
    depth = _json_depth(text)
    if depth > max_depth:
        raise BadInputError(f"{label}: JSON nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadInputError(f"{label}: not readable JSON ({_first_line(e)})") from None


def _json_depth(text: str) -> int:
    """The deepest nesting of [ and { outside strings (no recursion: 100k levels cost 200k steps)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _require_file(p: Path) -> None:
    try:
        if not p.exists():
            raise BadInputError(f"no such file: {p}")
        if not p.is_file():
            raise BadInputError(f"not a file: {p}")
    except OSError as e:
        raise BadInputError(f"{str(p)[:200]!r} cannot be read: {e.strerror or type(e).__name__}") from None


def _head(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(8)
    except OSError as e:
        raise BadInputError(f"{p} cannot be read: {e.strerror or type(e).__name__}") from None


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__
