"""Shared command-line options: one name, one type and one meaning per idea across every subcommand.

Polygraphy's ``tools/args`` is the model: an option that several tools take is declared once, in one
place, and each tool subscribes to it. Here each ``add_*`` function adds one idea to a subcommand's
parser, and ``tests/cli/test_option_names.py`` walks every subcommand to hold them to it:

- ``--plugin LIB.so``: a TensorRT plugin library, repeatable (``package``/``deploy``: one at most);
- ``--report REPORT.json``: a report written as one JSON file (``check --report-dir DIR`` writes a folder);
- ``--inputs FILE.npz``: real inputs, one array per graph input name;
- ``--no-verify``: skip the ONNX Runtime run that proves the written file computes what its source
  computes (``convert --no-measure`` is another idea: the measurement changes the plan);
- ``--target onnx|tensorrt``: deployed on ONNX Runtime, or as a TensorRT engine;
- ``--precision``: fp32/fp16/bf16 (and check's ``auto``), validated by one function;
- ``--atol``/``--rtol [OUTPUT=]VALUE``: repeatable, every output or one named output (export holds
  every output to one number: ``--atol VALUE``);
- ``--checkpoint FILE``: weights for the SPEC's model.

Old spellings stay accepted for one release as deprecated aliases (:func:`deprecated_alias`,
``deprecated_values=``): hidden from the option list, named in the subcommand's epilog, and each
prints one line on stderr (``ln-deploy: --plugins is deprecated; use --plugin``) before behaving
exactly as the new spelling. Validation that must fail with ln_deploy's one-line error rather than
argparse's usage text is deferred (:func:`defer`) and run by ``ln_deploy.cli`` before the command.

Nothing here imports a stage (this module is part of the shared layer) or anything heavy.
"""

from __future__ import annotations

import argparse
import math
import sys

# The one set of deployment targets: where the deployed model runs.
TARGETS = ("onnx", "tensorrt")
TARGET_HELP = "onnx (default): deployed on ONNX Runtime (serve, Triton's onnxruntime backend); tensorrt: " \
              "deployed as a TensorRT engine"
CHECKPOINT_HELP = "weights for the SPEC's model: .safetensors, or a state_dict torch.load(weights_only=True) " \
                  "reads (anything needing arbitrary unpickling is refused)"
PLUGIN_HELP = "a TensorRT plugin library (ln_deploy's libln_deploy_plugins.so or another)"
REPORT_HELP = "write the {what} report as JSON to this file"
INPUTS_HELP = "real inputs: a .npz with one array per input name"
NO_VERIFY_HELP = "skip the ONNX Runtime run that proves the written model computes what {what} computes " \
                 "(not recommended)"
TOLERANCE_HELP = "{kind} tolerance, for every output (VALUE) or one named output (OUTPUT=VALUE); repeatable"
TOLERANCE_ONE_HELP = "{kind} tolerance, one value for every output (this command takes no OUTPUT=VALUE)"
PRECISION_METAVAR = "{{{}}}"

_DEFERRED = "_cli_args_deferred"
_WARNED = "_cli_args_warned"


# -- the alias mechanism -------------------------------------------------------------------------------

def _warn_once(namespace, old: str, new: str) -> None:
    """One stderr line per deprecated spelling per command line, however often it is repeated."""
    warned = namespace.__dict__.setdefault(_WARNED, set())
    if old not in warned:
        warned.add(old)
        print(f"ln-deploy: {old} is deprecated; use {new}", file=sys.stderr)


def _epilog_note(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    head = "deprecated spellings (still accepted for one release, with a warning):"
    if not parser.epilog or head not in parser.epilog:
        parser.epilog = ((parser.epilog + "\n\n") if parser.epilog else "") + head
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # one line per old spelling
    parser.epilog += f"\n  {old:<22} use {new}"


class _Alias(argparse.Action):
    """A hidden old spelling that warns once, then hands each value to the new spelling's action."""

    def __init__(self, option_strings, dest, *, target: argparse.Action, spread: bool = False, **kwargs):
        self.target, self.spread = target, spread
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        new = self.target.option_strings[-1]
        _warn_once(namespace, option_string or self.option_strings[0], new)
        for v in (values if self.spread else [values]):
            self.target(parser, namespace, v, new)


def deprecated_alias(parser, old: str, target: argparse.Action, *, nargs=None, group=None) -> argparse.Action:
    """Accept ``old`` as a deprecated spelling of ``target`` (an action ``add_argument`` returned).

    ``nargs``: the old spelling's own arity when it differs (``--plugins A B`` for a repeatable
    ``--plugin``: each value is handed over in turn). ``group``: the mutually exclusive group the new
    spelling belongs to, so the old one excludes the same options."""
    kwargs = {"nargs": 0} if target.nargs == 0 else ({"nargs": nargs} if nargs is not None else {})
    if target.metavar is not None and target.nargs != 0:
        kwargs["metavar"] = target.metavar
    action = (group or parser).add_argument(old, action=_Alias, target=target, dest=f"_alias_{old.lstrip('-')}",
                                            spread=nargs in ("+", "*"), **kwargs)
    _epilog_note(parser, old, target.option_strings[-1])
    return action


class _Choice(argparse._StoreAction):
    """A choice whose renamed values stay accepted: ``deprecated_values={"ort-cpu": "onnx"}``."""

    def __init__(self, option_strings, dest, *, deprecated_values=None, **kwargs):
        self.deprecated_values = dict(deprecated_values or {})
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        new = self.deprecated_values.get(values)
        if new is not None:
            flag = self.option_strings[-1]
            _warn_once(namespace, f"{flag} {values}", f"{flag} {new}")
            values = new
        setattr(namespace, self.dest, values)


# -- deferred validation -------------------------------------------------------------------------------

def defer(parser, check) -> None:
    """Run ``check(args)`` after parsing, before the command: it may normalise ``args`` in place and
    raise ``BadInputError`` for ln_deploy's one-line error (argparse's own errors print the usage)."""
    parser.set_defaults(**{_DEFERRED: [*(parser.get_default(_DEFERRED) or []), check]})


def apply(args) -> None:
    """Run the subcommand's deferred checks (``ln_deploy.cli`` calls this once per run)."""
    for check in getattr(args, _DEFERRED, None) or []:
        check(args)


def _bad(message: str):
    from .errors import BadInputError

    return BadInputError(message)


# -- the shared options ---------------------------------------------------------------------------------

def add_plugin(parser, role: str, *, single: str | None = None, deprecated=()) -> argparse.Action:
    """``--plugin LIB.so``, repeatable, always a list (``args.plugin``). ``role``: what the command
    does with it; ``single``: the command takes one library at most, and why (help and error say so)."""
    action = parser.add_argument("--plugin", action="append", default=[], metavar="LIB.so",
                                 help=f"{PLUGIN_HELP}, {role}" + (f"; one at most ({single})" if single
                                                                  else "; repeatable"))
    for old in deprecated:
        deprecated_alias(parser, old, action, nargs="+")
    if single:
        def one_plugin(args):
            if len(args.plugin) > 1:
                raise _bad(f"--plugin given {len(args.plugin)} times; this command takes one ({single})")
        defer(parser, one_plugin)
    return action


def one(values):
    """The single value of a repeatable option limited to one (``add_plugin(single=...)``), or None."""
    return values[0] if values else None


def add_checkpoint(parser, detail: str = "") -> argparse.Action:
    """``--checkpoint FILE``: weights for the SPEC's model."""
    return parser.add_argument("--checkpoint", metavar="FILE", default=None,
                               help=CHECKPOINT_HELP + (f"; {detail}" if detail else ""))


def add_report(parser, what: str) -> argparse.Action:
    """``--report REPORT.json``: the command's report as one JSON file."""
    return parser.add_argument("--report", metavar="REPORT.json", default=None, help=REPORT_HELP.format(what=what))


def add_report_dir(parser, what: str) -> argparse.Action:
    """``--report-dir DIR``: only where a folder of several files is written."""
    return parser.add_argument("--report-dir", metavar="DIR", default=None,
                               help=f"write the report folder here: {what}")


def add_inputs(parser, detail: str, *, group=None, deprecated=()) -> argparse.Action:
    """``--inputs FILE.npz``; ``group``: a mutually exclusive group (e.g. with ``--spec``)."""
    action = (group or parser).add_argument("--inputs", metavar="FILE.npz", default=None,
                                            help=f"{INPUTS_HELP}; {detail}")
    for old in deprecated:
        deprecated_alias(parser, old, action, group=group)
    return action


def add_no_verify(parser, what: str, *, deprecated=()) -> argparse.Action:
    """``--no-verify``: skip the ONNX Runtime run that proves the output against its source."""
    action = parser.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP.format(what=what))
    for old in deprecated:
        deprecated_alias(parser, old, action)
    return action


def add_target(parser, effect: str, *, deprecated_values=None) -> argparse.Action:
    """``--target onnx|tensorrt`` (default onnx); ``effect``: what the target changes in this command."""
    action = parser.add_argument("--target", action=_Choice, default="onnx", metavar="{onnx,tensorrt}",
                                 deprecated_values=deprecated_values, help=f"{TARGET_HELP}. {effect}")
    for old, new in (deprecated_values or {}).items():
        _epilog_note(parser, f"--target {old}", f"--target {new}")

    def known_target(args):
        if args.target not in TARGETS:
            raise _bad(f"unknown --target {args.target!r} (choose from {', '.join(TARGETS)})")
    defer(parser, known_target)
    return action


def check_precision(value: str, choices) -> str:
    """The one precision validator of every subcommand (the message ``convert_model`` also gives)."""
    if value not in choices:
        raise _bad(f"unknown precision {value!r} (choose from {', '.join(choices)})")
    return value


def add_precision(parser, choices, help: str, *, default=None, required: bool = False) -> argparse.Action:
    """``--precision`` from ``choices`` (a subset of auto, fp32, fp16, bf16), validated after parsing so
    a wrong value is one line, as every other bad input."""
    action = parser.add_argument("--precision", default=default, required=required,
                                 metavar=PRECISION_METAVAR.format(",".join(choices)), help=help)
    choices = tuple(choices)

    def known_precision(args):
        if args.precision is not None:
            check_precision(args.precision, choices)
    defer(parser, known_precision)
    return action


def parse_tolerances(items, flag: str) -> dict[str, float]:
    """``["1e-3", "logits=5e-3"]`` → ``{"": 1e-3, "logits": 5e-3}`` (``""``: every output)."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = str(item).rpartition("=")
        if not sep:
            name, value = "", item
        try:
            v = float(value)
        except ValueError:
            raise _bad(f"--{flag} {item!r}: expected VALUE or OUTPUT=VALUE with a number") from None
        if not math.isfinite(v) or v < 0:
            raise _bad(f"--{flag} {item!r}: {flag} must be a finite number >= 0")
        out[name.strip()] = v
    return out


def add_tolerances(parser, what: str, *, rtol: bool = True, per_output: bool = True,
                   default: float | None = None) -> None:
    """``--atol``/``--rtol [OUTPUT=]VALUE``, repeatable. After parsing, ``args.atol``/``args.rtol`` are
    ``{"": every output, name: value}`` or None when not given; with ``per_output=False`` (the command
    holds every output to one number) a float, and ``OUTPUT=VALUE`` is refused."""
    kinds = ("atol", "rtol") if rtol else ("atol",)
    for kind in kinds:
        word = "absolute" if kind == "atol" else "relative"
        parser.add_argument(f"--{kind}", action="append", default=None,
                            metavar="[OUTPUT=]VALUE" if per_output else "VALUE",
                            help=(TOLERANCE_HELP if per_output else TOLERANCE_ONE_HELP).format(kind=word)
                            + f"; {what}")

    def parse(args):
        for kind in kinds:
            values = parse_tolerances(getattr(args, kind), kind)
            if not per_output:
                named = [k for k in values if k]
                if named:
                    raise _bad(f"--{kind} {named[0]}=...: this command holds every output to one {kind}; "
                               f"give --{kind} VALUE")
                setattr(args, kind, values.get("", default))
            else:
                setattr(args, kind, values or None)
    defer(parser, parse)


def tolerance_value(values: dict | None):
    """A parsed tolerance as the Python API takes it: None, one float (every output) or the dict."""
    if not values:
        return None
    return values[""] if set(values) == {""} else dict(values)
