"""Moved to ``ln_deploy.lowp_emulation`` (shared: convert measures with it, check runs it as a reference)."""

from ..lowp_emulation import *  # noqa: F401,F403
from ..lowp_emulation import METADATA_KEY, needs_emulation, strict_emulation  # noqa: F401
