"""``ln-deploy``: a thin command line over the Python API.

Each subcommand lives in its stage's ``cli`` module, which defines ``add_arguments(parser)`` and
``run(args) -> int``; those modules import nothing heavy at module level so ``--help`` is instant.
Exit codes: 0 success, 1 a check failed, 2 bad input or usage (argparse's own code for usage too),
3 an internal error (a bug in ln_deploy: one line asking for a report; ``--debug`` shows the traceback),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import sys

from . import __version__
from .errors import LnDeployError

# name -> (module, one-line help). Order is the pipeline's order.
COMMANDS = {
    "export": ("ln_deploy.export.cli", "export a PyTorch model (SPEC) to ONNX"),
    "fuse": ("ln_deploy.fuse.cli", "fuse normalization patterns into single operators or plugin ops"),
    "convert": ("ln_deploy.convert.cli", "convert to fp16/bf16 keeping normalization statistics in fp32"),
    "advise": ("ln_deploy.convert.advise_cli", "report normalizations whose inputs would overflow fp16"),
    "build": ("ln_deploy.build.cli", "build a TensorRT engine (needs TensorRT and a GPU)"),
    "check": ("ln_deploy.check.cli", "prove parity of PyTorch, ONNX Runtime and TensorRT"),
    "package": ("ln_deploy.serve.package_cli", "write a Triton model repository"),
    "manifests": ("ln_deploy.serve.manifests_cli", "write validated Kubernetes/KServe manifests for a repository"),
    "serve": ("ln_deploy.serve.cli", "serve a model over the KServe v2 protocol on ONNX Runtime"),
    "deploy": ("ln_deploy.deploy.cli", "export, fuse, convert, build, check and package in one certified run"),
    "verify": ("ln_deploy.deploy.verify_cli", "re-check a packaged model against its parity certificate"),
    "demo": ("ln_deploy.demo", "export and check every bundled model on the CPU"),
}


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ln-deploy",
        description="Deploy PyTorch models built around layer normalization: export, fuse, convert, "
        "build, check, package, serve.",
    )
    parser.add_argument("--version", action="version", version=f"ln-deploy {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if not _exists(module):  # a stage not present in this build
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from . import progress

    progress.set_quiet(args.quiet)
    from . import interrupts

    with interrupts.handling():
        rc = _run(parser, args)
        # An interrupt some fallback swallowed still ends the command with the signal's code (and
        # fileio committed nothing after it arrived).
        return interrupts.exit_code() or rc


def _run(parser, args) -> int:
    try:
        _refuse_empty_values(parser, args)
        from . import cli_args

        cli_args.apply(args)  # the shared options' deferred checks (one-line errors), see cli_args
        _refuse_outputs_over_inputs(parser, args)
        return int(args._run(args) or 0)
    except LnDeployError as e:
        if args.debug:
            raise
        print(f"ln-deploy {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # Backstop: the file system refusing a path no check anticipated (a name too long, a permission,
        # an I/O error) is about the user's files or machine: one line, exit 2; --debug shows where.
        if args.debug:
            raise
        where = f": {str(e.filename)[:200]}" if e.filename else ""
        print(f"ln-deploy {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"ln-deploy {args.command}: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except RecursionError as e:  # a hostile file nested deeper than any reader expected
        if args.debug:
            raise
        print(f"ln-deploy {args.command}: error: an input is nested too deeply to read ({e})", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the backstop: anything else is ln_deploy's bug, not a failed check
        if args.debug:
            raise
        if type(e).__module__.startswith("onnxruntime"):
            # ONNX Runtime failing while running the user's model (a fixed-shape Reshape fed another batch,
            # a kernel refusing a shape) is about the model: one line, exit 2, not an internal error.
            print(f"ln-deploy {args.command}: error: ONNX Runtime failed on the model: {_ort_message(e)}",
                  file=sys.stderr)
            return 2
        from .errors import InternalError

        err = InternalError(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
        print(f"ln-deploy {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


# Options whose value a command writes (a file or a folder); every other path-like option is read.
OUTPUT_OPTIONS = ("output", "report", "report_dir", "repo", "out", "timing_cache")


def _refuse_outputs_over_inputs(parser: argparse.ArgumentParser, args) -> None:
    """An output (``-o``, ``--report``, ``--report-dir``...) that is the same file as an input (the model,
    the SPEC's file, a checkpoint, inputs) or as another output is refused before anything runs:
    ``fuse m.onnx -o o.onnx --report m.onnx`` replaced the model with JSON, ``export f.py:g -o f.py``
    deleted the SPEC file. Derived outputs count too (build's ``ENGINE.json`` sidecar)."""
    from .fileio import refuse_same_files

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    outputs, inputs = {}, {}
    for action in sub.choices[args.command]._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        name = "/".join(action.option_strings) or action.metavar or action.dest
        for v in values:
            if not isinstance(v, str) or not v:
                continue
            if action.dest in OUTPUT_OPTIONS:
                outputs[name if name not in outputs else f"{name} ({v})"] = v
            else:  # only existing files can be overwritten (and --name m must not match --repo m)
                path, sep, attr = v.rpartition(":")  # SPEC: path/to/file.py:NAME
                for candidate, label in ((v, name), (path if sep and attr.isidentifier() else "", f"{name}'s file")):
                    with contextlib.suppress(OSError, ValueError):
                        if candidate and os.path.isfile(candidate):
                            inputs[f"{label} ({candidate})" if len(values) > 1 else label] = candidate
    if args.command == "build" and isinstance(getattr(args, "output", None), str):
        outputs["the engine's sidecar"] = args.output + ".json"
    refuse_same_files(outputs, inputs)


def _ort_message(e: BaseException) -> str:
    """ONNX Runtime's exception text without its C++ source location: the node, then what went wrong."""
    import re

    text = " ".join(str(e).split())
    m = re.search(r"while running (\S+) node\. Name:'([^']*)' Status Message: (.*)", text)
    if m:
        detail = re.sub(r"^\S+:\d+ [^(]*\([^)]*\) ", "", m.group(3))
        text = f"{m.group(1)} node {m.group(2)!r}: {detail}"
    return text[:300] or type(e).__name__


def _refuse_empty_values(parser: argparse.ArgumentParser, args) -> None:
    """An empty string is never a valid path, spec or name here (``--report-dir ""`` would mean the
    current directory, ``--repo ""`` too): refuse it instead of guessing."""
    from .errors import BadInputError

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[args.command]._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            raise BadInputError(f"{name} must not be empty")


if __name__ == "__main__":
    sys.exit(main())
