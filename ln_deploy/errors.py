"""User-facing errors. The CLI turns each into one line on stderr and its exit code."""


class LnDeployError(Exception):
    """Base of every error meant for the user. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class BadInputError(LnDeployError):
    """A file, spec, option or model the user gave cannot be used (exit 2)."""

    exit_code = 2


class MissingDependencyError(LnDeployError):
    """An optional dependency (TensorRT, a GPU, the serving extra...) is needed and absent (exit 2)."""

    exit_code = 2

    def __init__(self, what: str, hint: str = ""):
        msg = f"{what} is not available"
        if hint:
            msg += f": {hint}"
        super().__init__(msg)


class CheckFailedError(LnDeployError):
    """A parity, invariance or safety check ran and failed (exit 1)."""

    exit_code = 1


class InternalError(LnDeployError):
    """A bug in ln_deploy, not in the user's input or model (exit 3): the message ends with
    "please report this"; ``--debug`` shows the traceback."""

    exit_code = 3

    def __init__(self, what: str):
        super().__init__(f"internal error: {what}; please report this (--debug shows the traceback)")


def require(module: str, extra: str | None = None, what: str | None = None):
    """Import an optional dependency, or raise MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # noqa: F841 - the message names the fix, not the traceback
        hint = f"pip install 'ln_deploy[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(what or module, hint) from None
