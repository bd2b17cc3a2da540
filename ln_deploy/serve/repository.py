"""Write and validate Triton model repositories.

``package_model`` builds ``<repo>/<name>/{config.pbtxt, 1/model.onnx|model.plan}`` from the model
itself (names, data types and dims are read from the ONNX graph, or from an engine's JSON sidecar
since TensorRT is not importable on CPU machines), validates what it wrote by parsing
``config.pbtxt`` back into Triton's ``ModelConfig`` protobuf and comparing it with the model copy,
and only then renames the finished folder into place. A repository never holds half a model.

For engines that need ln_deploy's TensorRT plugin, the library is copied into the version folder
(beside the engine it was built with: a plugin and an engine are a pair) and the exact server flag
is written to ``<repo>/tritonserver.args`` (one argument per line, covering every plugin in the
repository) and printed. Triton ignores files at the repository root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError, CheckFailedError
from . import model_config as mc
from ..signature import EngineInfo, Signature, TensorSpec, engine_signature, onnx_signature, triton_type

log = logging.getLogger(__name__)

ONNX_PLATFORM = "onnxruntime_onnx"
PLAN_PLATFORM = "tensorrt_plan"
DEFAULT_FILENAMES = {ONNX_PLATFORM: "model.onnx", PLAN_PLATFORM: "model.plan"}
ARGS_FILE = "tritonserver.args"
DEFAULT_MAX_BATCH = 8
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass
class PackageResult:
    model_dir: Path
    config_path: Path
    config: object  # ModelConfig protobuf
    server_args: list[str] = field(default_factory=list)  # flags tritonserver needs for this repository
    ld_preload: str | None = None  # the LD_PRELOAD alternative to server_args
    notes: list[str] = field(default_factory=list)  # e.g. a lowered ORT optimisation level, and why

    def summary(self) -> str:
        lines = [f"wrote {self.model_dir} (platform {self.config.platform}, max_batch_size {self.config.max_batch_size})"]
        if self.server_args:
            lines.append("start Triton with: tritonserver --model-repository=<repo> " + " ".join(_shell_quote(a) for a in self.server_args))
            lines.append(f"  (or LD_PRELOAD={self.ld_preload}; the flags are also in <repo>/{ARGS_FILE})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def model_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return ONNX_PLATFORM
    if suffix in (".plan", ".engine", ".trt"):
        return PLAN_PLATFORM
    raise BadInputError(f"{path}: expected an ONNX model (.onnx) or a TensorRT engine (.plan/.engine)")


def check_model_name(name: str) -> str:
    # fullmatch: with match(), "$" also matched before a trailing newline ("m\n" was accepted)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", "..") or name.isdigit():
        raise BadInputError(
            f"model name {name!r}: use letters, digits, '_', '-', '.' (not starting with '.' or '-', not all digits)")
    return name


def build_config(name: str, platform: str, sig: Signature, *, max_batch_size: int, instances: int = 1,
                 kind: str = "auto", batch_window_us: int = 500):
    """A ``ModelConfig`` for ``sig``, built field by field (no text templates)."""
    pb = mc.model_config_pb2()
    config = pb.ModelConfig()
    config.name = name
    config.platform = platform
    config.max_batch_size = max_batch_size
    config.default_model_filename = DEFAULT_FILENAMES[platform]
    drop = 1 if max_batch_size > 0 else 0
    for t in sig.inputs:
        i = config.input.add()
        i.name = t.name
        i.data_type = pb.DataType.Value(triton_type(t.datatype))
        i.dims.extend(t.shape[drop:])
    for t in sig.outputs:
        o = config.output.add()
        o.name = t.name
        o.data_type = pb.DataType.Value(triton_type(t.datatype))
        o.dims.extend(t.shape[drop:])
    if max_batch_size > 0:
        config.dynamic_batching.max_queue_delay_microseconds = batch_window_us
    group = config.instance_group.add()
    group.count = instances
    group.kind = pb.ModelInstanceGroup.Kind.Value(_KINDS[kind])
    return config


def _resolve_max_batch(sig: Signature, requested: int | None, engine: EngineInfo | None, where: Path) -> int:
    reason = sig.not_batchable_reason()
    profile_cap = engine.max_batch_from_profiles if engine else None
    if requested is None:
        if reason:
            return 0
        return min(DEFAULT_MAX_BATCH, profile_cap) if profile_cap else DEFAULT_MAX_BATCH
    if requested < 0:
        raise BadInputError(f"--max-batch-size must be >= 0, got {requested}")
    if requested > 0 and reason:
        raise BadInputError(f"{where}: cannot batch (max_batch_size {requested}): {reason}; use --max-batch-size 0")
    if requested > 0 and profile_cap is not None and requested > profile_cap:
        raise BadInputError(
            f"{where}: max_batch_size {requested} exceeds the engine's optimization profiles (batch up to {profile_cap})")
    return requested


def package_model(model_path: str | os.PathLike, repo: str | os.PathLike, name: str, *,
                  max_batch_size: int | None = None, instances: int = 1, kind: str = "auto",
                  plugin: str | os.PathLike | None = None, batch_window_us: int = 500, version: int = 1,
                  model_root: str = "/models", force: bool = False, ort_check: bool = True,
                  certificate: dict | None = None) -> PackageResult:
    """Write ``<repo>/<name>`` for an ONNX model or a TensorRT engine and validate it.

    ``max_batch_size`` None picks 8 when every input and output has a dynamic first axis, else 0.
    ``model_root`` is where the repository is mounted inside the server container; the plugin
    flag refers to it. ``force`` replaces an existing ``<repo>/<name>``.
    ``certificate``: a parity certificate (``ln_deploy.deploy.certificate``): it is sealed with the
    packaged file's hash and written as ``<repo>/<name>/parity.json``; ``max_batch_size`` is capped at
    its largest verified batch, and a certificate of a failed check is refused unless ``force``.
    """
    model_path = Path(model_path)
    repo = Path(repo)
    check_model_name(name)
    if not model_path.is_file():
        raise BadInputError(f"no such file: {model_path}")
    platform = model_kind(model_path)
    if instances < 1:
        raise BadInputError(f"--instances must be >= 1, got {instances}")
    if kind not in _KINDS:
        raise BadInputError(f"instance kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if version < 1:
        raise BadInputError(f"version must be >= 1, got {version}")
    if batch_window_us < 0:
        raise BadInputError("the batching window must be >= 0")
    if not model_root.startswith("/"):
        raise BadInputError(f"--model-root must be an absolute path inside the container, got {model_root!r}")
    plugin_path = Path(plugin) if plugin is not None else None
    if plugin_path is not None:
        if platform != PLAN_PLATFORM:
            raise BadInputError("--plugin is for TensorRT engines; ONNX Runtime does not load TensorRT plugins")
        _check_shared_library(plugin_path)
    if repo.exists() and not repo.is_dir():
        raise BadInputError(f"--repo {repo} exists and is not a directory")
    if not repo.parent.is_dir():
        raise BadInputError(f"the parent of --repo does not exist: {repo.parent}")
    final = repo / name
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        # --force replaces a model folder this command wrote, never a link or a file someone put there
        raise BadInputError(f"{final} exists and is not a model folder (a link or a file): not replacing it")
    if final.exists() and not force:
        raise BadInputError(f"{final} already exists (use --force to replace it)")

    engine = None
    onnx_model = None
    graph_level = None
    if platform == ONNX_PLATFORM:
        from ..fileio import load_onnx

        onnx_model = load_onnx(model_path)  # untrusted: checker + external-data paths
        sig = onnx_signature(onnx_model)
        if ort_check:  # the source itself: a model Triton's backend cannot open is bad input, not a failed check
            from ..ort import level_from_triton

            # the level Triton will open it at: lowered where ORT crashes at ORT_ENABLE_ALL
            graph_level, level_note = triton_optimization_level(onnx_model)
            problems = _ort_opens(onnx_model, level=level_from_triton(graph_level))
            if problems:
                raise BadInputError(f"{model_path}: {problems[0]}")
    else:
        engine = engine_signature(model_path)
        sig = engine.signature
        if plugin_path is None and engine.plugins:
            from ..kernels import plugin_library

            found = plugin_library()  # the sidecar lists a plugin: a built or installed copy of ln_deploy's
            if found is not None and found.name in engine.plugins:
                _check_shared_library(found)
                plugin_path = found
    if kind == "cpu" and platform == PLAN_PLATFORM:
        raise BadInputError("a TensorRT engine runs on a GPU: instance kind 'cpu' is not possible")
    if platform == PLAN_PLATFORM and kind == "auto":
        kind = "gpu"
    mbs = _resolve_max_batch(sig, max_batch_size, engine, model_path)
    if certificate is not None:
        if not certificate.get("passed") and not force:
            raise CheckFailedError(f"{model_path}: its parity check failed; not packaged (--force packages it anyway)")
        verified = certificate.get("max_batch_size")
        if mbs > 0 and isinstance(verified, int) and verified >= 1:
            mbs = min(mbs, verified)  # never promise a batch the check did not run
    config = build_config(name, platform, sig, max_batch_size=mbs, instances=instances, kind=kind,
                          batch_window_us=batch_window_us)
    notes = []
    if onnx_model is not None and ort_check and graph_level is not None:
        config.optimization.graph.level = graph_level
        notes.append(level_note)

    created_repo = not repo.exists()
    try:
        repo.mkdir(exist_ok=True)
        from ..fileio import make_temp_dir

        tmp = make_temp_dir(repo, prefix=f".{name}.")  # the umask's mode: Triton's non-root user reads it
    except OSError as e:
        if created_repo:
            with contextlib.suppress(OSError):
                repo.rmdir()
        raise BadInputError(f"cannot write the repository {repo}: {e.strerror or type(e).__name__}") from None
    try:
        vdir = tmp / str(version)
        vdir.mkdir()
        (tmp / "config.pbtxt").write_text(mc.config_to_text(config))
        if platform == ONNX_PLATFORM:
            from ..fileio import save_onnx_atomic

            # Re-saved rather than copied: external data is read through load_onnx's path checks and
            # written beside the copy (one file, only when the model needs it), never followed blindly.
            save_onnx_atomic(onnx_model, vdir / DEFAULT_FILENAMES[platform])
        else:
            shutil.copyfile(model_path, vdir / DEFAULT_FILENAMES[platform])
            shutil.copyfile(model_path.with_name(model_path.name + ".json"), vdir / (DEFAULT_FILENAMES[platform] + ".json"))
            if plugin_path is not None:
                copy_plugin(plugin_path, vdir)
        if certificate is not None:
            from .parity import FILENAME, seal

            sealed = seal(certificate, vdir / DEFAULT_FILENAMES[platform], tmp)
            (tmp / FILENAME).write_text(json.dumps(sealed, indent=2, sort_keys=True) + "\n")
        try:
            validate_model_dir(tmp, name=name, ort_check=ort_check)
        except CheckFailedError as e:  # name the folder the user asked for, not the temporary
            raise CheckFailedError(str(e).replace(str(tmp), str(final))) from None
        from ..fileio import fix_modes
        from ..interrupts import raise_if_interrupted

        raise_if_interrupted()  # nothing is committed after Ctrl-C/SIGTERM, even one caught as an error
        fix_modes(tmp)
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_repo:  # a repository this call created holds nothing now: leave no trace
            with contextlib.suppress(OSError):
                repo.rmdir()
        raise
    args, preload = write_server_args(repo, model_root)
    return PackageResult(final, final / "config.pbtxt", config, args, preload, notes)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    trash = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.rename(final, trash)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(trash, final)
        raise
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def _check_shared_library(path: Path) -> None:
    if not path.is_file():
        raise BadInputError(f"plugin library not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            raise BadInputError(f"{path} is not a shared library (no ELF header)")


PLUGIN_MANIFEST = "ln_deploy_plugins.json"


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF shared library (what the loader will look for).
    A truncated or corrupt file is one BadInputError line (every offset is read from the file)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 6 or data[4] != 2 or data[5] != 1:
        return []  # not ELF64 LSB: nothing we can follow
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        if shnum and shentsize < 64:
            raise ValueError(f"section header size {shentsize}")
        sections = [struct.unpack_from("<IIQQQQII", data, shoff + i * shentsize) for i in range(shnum)]
        needed = []
        for _name, sh_type, _flags, _addr, offset, size, link, _info in sections:
            if sh_type != 6:  # SHT_DYNAMIC
                continue
            str_off = sections[link][4]
            for k in range(0, min(size, len(data)), 16):
                tag, val = struct.unpack_from("<qQ", data, offset + k)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    end = data.index(b"\0", str_off + val)
                    needed.append(data[str_off + val:end].decode())
    except (struct.error, IndexError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise BadInputError(f"{path} is not a readable ELF shared library (truncated or corrupt: "
                            f"{type(e).__name__})") from None
    return needed


def _plain_library_name(name: str, lib: Path) -> str:
    """A DT_NEEDED entry names a file beside the plugin only if it is a plain file name; the library
    is untrusted ("../../../../OUT" copied a file outside the repository)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name) > 255:
        raise BadInputError(f"{lib}: its DT_NEEDED entry {name[:100]!r} is not a plain library name; "
                            "refusing to follow it")
    return name


def copy_plugin(plugin: Path, dest: Path) -> list[str]:
    """Copy the plugin and the libraries it needs that sit beside it (ln_deploy's plugin needs
    libln_kernels.so and finds it through RUNPATH $ORIGIN); record which is which."""
    shutil.copyfile(plugin, dest / plugin.name)
    deps, todo = [], [plugin]
    while todo:
        lib = todo.pop()
        for name in elf_needed(lib):
            beside = plugin.parent / _plain_library_name(name, lib)
            if beside.is_file() and name not in deps and name != plugin.name:
                shutil.copyfile(beside, dest / name)
                deps.append(name)
                todo.append(beside)
    (dest / PLUGIN_MANIFEST).write_text(json.dumps({"plugins": [plugin.name], "dependencies": deps}, indent=2))
    return deps


def plugins_in(vdir: Path) -> list[Path]:
    """The plugin libraries a version folder's manifest lists (not their dependencies)."""
    try:
        manifest = json.loads((vdir / PLUGIN_MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    names = manifest.get("plugins", []) if isinstance(manifest, dict) else []
    return [vdir / n for n in names if isinstance(n, str) and "/" not in n and (vdir / n).is_file()]


def plugin_libraries(repo: str | os.PathLike) -> list[Path]:
    """Plugin libraries inside TensorRT models' version folders, one per distinct content."""
    repo = Path(repo)
    seen: dict[str, Path] = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cfg = model_dir / "config.pbtxt"
        if not cfg.is_file():
            continue
        try:
            if read_model_config(cfg).platform != PLAN_PLATFORM:
                continue
        except BadInputError:
            continue
        for vdir in version_dirs(model_dir):
            for lib in plugins_in(vdir):
                digest = hashlib.sha256(lib.read_bytes()).hexdigest()
                seen.setdefault(digest, lib)  # the same library twice would register its creators twice
    return list(seen.values())


def write_server_args(repo: str | os.PathLike, model_root: str = "/models") -> tuple[list[str], str | None]:
    """Write (or remove) ``<repo>/tritonserver.args`` for every plugin in the repository."""
    from ..fileio import write_text_atomic

    repo = Path(repo)
    libs = plugin_libraries(repo)
    path = repo / ARGS_FILE
    if not libs:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return [], None
    in_container = [f"{model_root.rstrip('/')}/{lib.relative_to(repo).as_posix()}" for lib in libs]
    args = [f"--backend-config=tensorrt,plugins={';'.join(in_container)}"]
    write_text_atomic(path, "\n".join(args) + "\n")
    return args, ":".join(in_container)


def read_model_config(path: str | os.PathLike):
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"cannot read {p}: {e}") from None
    return mc.parse_config_text(text, str(p))


def version_dirs(model_dir: Path) -> list[Path]:
    """Numeric version folders, highest first (Triton's default policy serves the highest)."""
    out = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not (len(p.name) > 1 and p.name[0] == "0")]
    return sorted(out, key=lambda p: int(p.name), reverse=True)


def model_signature_from_file(path: Path, platform: str) -> Signature:
    if platform == ONNX_PLATFORM:
        from ..fileio import load_onnx

        return onnx_signature(load_onnx(path))
    return engine_signature(path).signature


def validate_model_dir(model_dir: str | os.PathLike, *, name: str | None = None, ort_check: bool = True):
    """Check a model folder of a Triton repository against the model it holds; return its config.

    Parses ``config.pbtxt`` into ``ModelConfig``; checks the platform, the version folders and
    model files, and that every input and output agrees with the model in name, data type and
    dims (batch axis dropped and dynamic when ``max_batch_size > 0``). With ``ort_check`` an ONNX
    model must also open in ONNX Runtime, as Triton's onnxruntime backend will open it.
    Raises CheckFailedError listing every disagreement.
    """
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.pbtxt"
    if not cfg_path.is_file():
        raise CheckFailedError(f"{model_dir}: no config.pbtxt")
    try:
        config = read_model_config(cfg_path)
    except BadInputError as e:
        raise CheckFailedError(str(e)) from None
    problems: list[str] = []
    expected_name = name or model_dir.name
    if config.name != expected_name:
        problems.append(f"config name {config.name!r} differs from the model folder {expected_name!r}")
    platform = config.platform or {"onnxruntime": ONNX_PLATFORM, "tensorrt": PLAN_PLATFORM}.get(config.backend, "")
    if platform not in DEFAULT_FILENAMES:
        raise CheckFailedError(f"{cfg_path}: platform {config.platform or config.backend!r} is not one ln_deploy writes")
    filename = config.default_model_filename or DEFAULT_FILENAMES[platform]
    if filename in (".", "..") or "/" in filename or "\\" in filename:
        # the config is untrusted: "../../elsewhere/x.onnx" would have `serve` load a file outside the repository
        raise CheckFailedError(f"{cfg_path}: default_model_filename {filename!r} is not a file name")
    versions = version_dirs(model_dir)
    if not versions:
        raise CheckFailedError(f"{model_dir}: no numeric version folder")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size {config.max_batch_size} is negative")
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append("dynamic_batching is set but max_batch_size is 0")
    if not config.instance_group or any(g.count < 1 for g in config.instance_group):
        problems.append("instance_group needs a count >= 1")
    if platform == PLAN_PLATFORM and any(g.kind == mc.model_config_pb2().ModelInstanceGroup.KIND_CPU
                                         for g in config.instance_group):
        problems.append("a TensorRT engine cannot run in a KIND_CPU instance")
    for vdir in versions:
        model_file = vdir / filename
        if not model_file.is_file():
            problems.append(f"{model_file} is missing")
            continue
        if model_dir.resolve() not in model_file.resolve().parents:
            problems.append(f"{model_file} is a link to a file outside the model folder")
            continue
        try:
            sig = model_signature_from_file(model_file, platform)
        except BadInputError as e:
            problems.append(str(e))
            continue
        problems += compare_config(config, sig, where=str(model_file))
        if platform == ONNX_PLATFORM and ort_check:
            from ..ort import level_from_triton

            graph_level = config.optimization.graph.level if config.optimization.HasField("graph") else None
            problems += _ort_opens(model_file, level=level_from_triton(graph_level))
        if platform == PLAN_PLATFORM and (vdir / PLUGIN_MANIFEST).exists():
            try:
                manifest = json.loads((vdir / PLUGIN_MANIFEST).read_text())
                libs = [*manifest.get("plugins", []), *manifest.get("dependencies", [])]
            except (OSError, ValueError, AttributeError) as e:
                problems.append(f"{vdir / PLUGIN_MANIFEST} is unreadable ({e})")
                libs = []
            for lib in libs:
                if not isinstance(lib, str) or "/" in lib or lib.startswith("."):
                    problems.append(f"{PLUGIN_MANIFEST} names {lib!r}, not a file beside it")
                elif not (vdir / lib).is_file() or (vdir / lib).read_bytes()[:4] != b"\x7fELF":
                    problems.append(f"{vdir / lib} is missing or not a shared library")
    if problems:
        raise CheckFailedError(f"{model_dir}: " + "; ".join(problems))
    return config


def compare_config(config, sig: Signature, where: str = "model") -> list[str]:
    """Every disagreement between a ``ModelConfig`` and a model signature, as sentences."""
    problems = []
    mbs = config.max_batch_size
    for role, declared, actual in (("input", config.input, sig.inputs), ("output", config.output, sig.outputs)):
        by_name = {t.name: t for t in actual}
        names = [d.name for d in declared]
        if len(set(names)) != len(names):
            problems.append(f"duplicate {role} names in config: {names}")
        missing = sorted(set(by_name) - set(names))
        if missing:
            problems.append(f"{where} has {role}s {missing} that the config does not declare")
        for d in declared:
            t: TensorSpec | None = by_name.get(d.name)
            if t is None:
                problems.append(f"config {role} {d.name!r} is not a {role} of {where}")
                continue
            dtype = mc.data_type_name(d.data_type)
            if dtype != triton_type(t.datatype):
                problems.append(f"{role} {d.name!r}: config type {dtype}, model type {triton_type(t.datatype)}")
            model_dims = list(t.shape)
            if mbs > 0:
                if not model_dims or model_dims[0] != -1:
                    problems.append(f"{role} {d.name!r}: max_batch_size {mbs} needs a dynamic first axis, "
                                    f"the model has {model_dims}")
                    continue
                model_dims = model_dims[1:]
            if list(d.dims) != model_dims:
                problems.append(f"{role} {d.name!r}: config dims {list(d.dims)}, model dims {model_dims}"
                                + (" (batch axis dropped)" if mbs > 0 else ""))
    return problems


def _ort_opens(path_or_model, level: str = "all") -> list[str]:
    """Reasons ONNX Runtime cannot open a model file, or an in-memory ModelProto (its external data
    loaded: ORT cannot shape-infer through external constants), at the optimisation ``level``
    Triton's backend will use; [] when it opens. The session is built in a child process first
    (``ln_deploy.ort``): a native crash is a reason, not the end of this process. A model over
    protobuf's 2 GB cannot be serialized in memory: not checked here (its written copy is, by path)."""
    from ..ort import OrtCrash, SessionConfig, first_line, open_session

    if isinstance(path_or_model, (str, Path)):
        source, label = str(path_or_model), Path(path_or_model).name
    else:
        try:
            source, label = path_or_model.SerializeToString(), "the model"
        except Exception:  # noqa: BLE001 - protobuf refuses messages over 2 GB
            return []
    try:
        open_session(source, SessionConfig(level=level), probe=True)
    except OrtCrash as e:
        return [str(e.result.line(label))]
    except Exception as e:  # noqa: BLE001 - any ORT failure is a reason Triton would fail too
        return [f"ONNX Runtime cannot open {label}: {first_line(e)}"]
    return []


def triton_optimization_level(model) -> tuple[int | None, str]:
    """(``optimization.graph.level`` for Triton's onnxruntime backend, or None for its default
    ORT_ENABLE_ALL; a note when a lower level is needed). A model on which ONNX Runtime crashes at
    ORT_ENABLE_ALL (a known optimizer bug, docs/precision.md) gets the level the probe found safe;
    Triton cannot disable a single optimizer, so that is ORT_ENABLE_EXTENDED."""
    from ..ort import OrtCrash, deployable_config, triton_graph_level

    try:
        source = model if isinstance(model, (str, Path)) else model.SerializeToString()
        dep = deployable_config(source)
    except OrtCrash:
        return None, ""  # crashes at every level: _ort_opens reports it
    except Exception:  # noqa: BLE001 - over 2 GB in memory: its written copy is checked by path
        return None, ""
    if not dep.worked_around:
        return None, ""
    level = triton_graph_level(dep.config)
    return level, f"{dep.note('the model')}; config.pbtxt sets optimization.graph.level {level}"
