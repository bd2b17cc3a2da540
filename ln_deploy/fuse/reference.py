"""Deprecated path: the plugin nodes' reference lives in ``ln_deploy.plugin_reference`` (beside plugin_spec)."""

from ..plugin_reference import (expand_plugin_nodes, expand_plugins, norm_reference,  # noqa: F401
                                skip_norm_reference)
