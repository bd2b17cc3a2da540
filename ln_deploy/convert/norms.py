"""Deprecated path: normalization sites are found by ``ln_deploy.norm_sites`` (shared by convert and check)."""

from ..norm_sites import *  # noqa: F401,F403
from ..norm_sites import NormSite, find_normalizations  # noqa: F401
