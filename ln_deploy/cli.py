"""``ln-deploy``: a thin command line over the Python API.

Each subcommand lives in its stage's ``cli`` module, which defines ``add_arguments(parser)`` and
``run(args) -> int``; those modules import nothing heavy at module level so ``--help`` is instant.
Exit codes: 0 success, 1 a check failed, 2 bad input or usage (argparse's own code for usage too),
3 an internal error (a bug in ln_deploy: one line asking for a report; ``--debug`` shows the traceback),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
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
    "serve": ("ln_deploy.serve.cli", "serve a model over the KServe v2 protocol on ONNX Runtime"),
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
    try:
        _refuse_empty_values(parser, args)
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
    except KeyboardInterrupt:
        print(f"ln-deploy {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the backstop: anything else is ln_deploy's bug, not a failed check
        if args.debug:
            raise
        from .errors import InternalError

        err = InternalError(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
        print(f"ln-deploy {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


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
