"""ln_deploy's PyTorch runner for ``polygraphy run``.

Polygraphy 0.53.6's ``polygraphy run`` (``polygraphy/tools/run/run.py``) iterates the entry points of the
group ``polygraphy.run.plugins``, calls each one's loaded object with no arguments and appends the
returned argument groups to its own subscriptions; ``RunnerSelectArgs`` then offers every
``BaseRunnerArgs`` group as a runner option (``--<opt>``). pyproject.toml declares::

    [project.entry-points."polygraphy.run.plugins"]
    ln_deploy = "ln_deploy.check.polygraphy_plugin:export_argument_groups"

so, with ln_deploy installed::

    polygraphy run model.onnx --onnxrt --torch [--torch-spec models/transformer.py:pre_ln_encoder]

compares ONNX Runtime with the PyTorch model. Without ``--torch-spec`` the SPEC recorded by
``ln-deploy export`` in the model's metadata (``ln_deploy.spec``) is used. Output names are the ONNX
model's, so Polygraphy matches them one to one.

Nothing heavy is imported here: ``polygraphy run`` loads this module even when ``--torch`` is not used.
"""

from __future__ import annotations

from polygraphy.tools.args.base import BaseRunnerArgs
from polygraphy.tools.script import make_invocable


class TorchRunnerArgs(BaseRunnerArgs):
    """
    PyTorch Inference (ln_deploy): running the original PyTorch model (an ln_deploy SPEC) with ln_deploy's TorchRunner.

    Depends on:

        - ModelArgs
    """

    def get_name_opt_impl(self):
        return "PyTorch (ln_deploy)", "torch"

    def get_extra_help_text_impl(self):
        return "Needs --torch-spec unless the ONNX model was written by ln-deploy export."

    def add_parser_args_impl(self):
        self.group.add_argument("--torch-spec", metavar="SPEC", default=None,
                                help="the PyTorch model, path/to/file.py:NAME or package.module:NAME "
                                     "(default: the ln_deploy.spec recorded in the ONNX model's metadata)")
        self.group.add_argument("--torch-checkpoint", metavar="FILE", default=None,
                                help="weights for the SPEC (.safetensors or a state_dict)")
        self.group.add_argument("--torch-device", choices=["cpu", "cuda"], default="cpu",
                                help="where the PyTorch runner runs (default: cpu)")

    def parse_impl(self, args):
        self.spec = getattr(args, "torch_spec", None)
        self.checkpoint = getattr(args, "torch_checkpoint", None)
        self.device = getattr(args, "torch_device", "cpu")

    def _model_info(self):
        """(spec from metadata, output names, dynamic input axes) of the ONNX model given to ``polygraphy run``, if any."""
        from polygraphy.tools.args.model import ModelArgs

        path = self.arg_groups[ModelArgs].path if ModelArgs in self.arg_groups else None
        if not path or not str(path).endswith(".onnx"):
            return None, None, None
        import onnx

        try:
            m = onnx.load(str(path), load_external_data=False)
        except Exception:
            return None, None, None
        meta = {p.key: p.value for p in m.metadata_props}
        dynamic = {}
        for vi in m.graph.input:
            for axis, d in enumerate(vi.type.tensor_type.shape.dim):
                if not d.HasField("dim_value"):
                    dynamic.setdefault(vi.name, {})[axis] = d.dim_param or f"dim{axis}"
        return meta.get("ln_deploy.spec"), [o.name for o in m.graph.output], dynamic

    def add_to_script_impl(self, script):
        from polygraphy.logger import G_LOGGER

        meta_spec, output_names, dynamic_axes = self._model_info()
        spec = self.spec or meta_spec
        if not spec:
            G_LOGGER.critical("--torch needs --torch-spec SPEC (the ONNX model records no ln_deploy.spec)")
        script.add_import(imports=["LoadTorchModel", "TorchRunner"], frm="ln_deploy.check.runners")
        loader = script.add_loader(make_invocable("LoadTorchModel", spec, checkpoint=self.checkpoint),
                                   "load_torch_model")
        script.add_runner(make_invocable("TorchRunner", loader, output_names=output_names,
                                          dynamic_axes=dynamic_axes, device=self.device))


def export_argument_groups():
    """Entry point of ``polygraphy.run.plugins``: the argument groups ln_deploy adds to ``polygraphy run``."""
    return [TorchRunnerArgs()]
