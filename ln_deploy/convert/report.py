"""What a conversion did: ``ConversionReport`` and how it is filled from the plan."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .graph import TYPE_NAMES, all_nodes, module_path


@dataclass
class ConversionReport:
    """What ``convert_model`` did; ``to_dict()`` (the ``--report`` JSON) holds every field by its name:
    ``precision``, ``keep_io_types``, ``target``, ``force_norm_fp16``, ``nodes``, ``low_nodes``,
    ``fp32_nodes`` ({node, op_type, module, reason} each), ``emulated_nodes`` ({node, op_type, module}),
    ``casts_inserted``, ``casts_removed``, ``normalizations`` ({name, module, kind, form, handling}),
    ``measured`` (rounds, the nodes measurement sent to fp32, the output errors), ``notes``."""

    precision: str
    keep_io_types: bool
    target: str
    force_norm_fp16: bool
    nodes: int = 0
    low_nodes: int = 0
    fp32_nodes: list[dict] = field(default_factory=list)  # {node, op_type, module, reason}
    emulated_nodes: list[dict] = field(default_factory=list)  # {node, op_type, module}
    casts_inserted: int = 0
    casts_removed: int = 0
    normalizations: list[dict] = field(default_factory=list)  # {name, module, kind, form, handling}
    measured: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Every field by its name."""
        return asdict(self)

    def summary(self) -> str:
        lines = [f"precision {self.precision}: {self.low_nodes}/{self.nodes} nodes in {self.precision}, "
                 f"{len(self.fp32_nodes)} in fp32, {len(self.emulated_nodes)} emulated "
                 f"for ORT CPU, {self.casts_inserted} Casts inserted, {self.casts_removed} removed"]
        for n in self.normalizations:
            lines.append(f"  norm {n['module'] or n['name']} ({n['form']} {n['kind']}): {n['handling']}")
        for n in self.fp32_nodes:
            if n["reason"].startswith("measured"):
                lines.append(f"  fp32 {n['node']} ({n['op_type']}): {n['reason']}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def fill_report(rep, model, planner, sites, force, low):
    rep.nodes = sum(1 for _ in all_nodes(model.graph))
    for key, node in planner.nodes.items():
        d = planner.plan.get(key, "low")
        if d == "fp32":
            rep.fp32_nodes.append({"node": key, "op_type": node.op_type, "module": module_path(node),
                                   "reason": planner.reason.get(key, "")})
        elif d == "emulate" and rep.target == "ort-cpu":
            rep.emulated_nodes.append({"node": key, "op_type": node.op_type, "module": module_path(node)})
    rep.low_nodes = rep.nodes - len(rep.fp32_nodes)
    lowname = TYPE_NAMES[low]
    for s in sites:
        if s.form == "fused":
            handling = (f"decomposed and computed in {lowname} (forced): statistics NOT protected" if force
                        else f"{s.op_type} with stash_type=1: {lowname} tensors, fp32 statistics")
        elif s.form == "plugin":
            handling = f"ln_deploy plugin: {lowname} tensors, fp32 accumulation in the kernel"
        elif force:
            handling = f"decomposed, computed in {lowname} (forced): statistics NOT protected"
        else:
            handling = "decomposed: kept in fp32 (fuse it with `ln-deploy fuse` to run it as one op)"
        rep.normalizations.append({"name": s.name, "module": s.module, "kind": s.kind, "form": s.form,
                                   "handling": handling})
    if any(s.form == "decomposed" for s in sites) and not force:
        rep.notes.append(f"{sum(s.form == 'decomposed' for s in sites)} decomposed normalization(s) kept in fp32; "
                         "fusing first (ln_deploy.fuse) lets them run as one op with fp32 statistics")
    if rep.emulated_nodes:
        rep.notes.append(f"{len(rep.emulated_nodes)} {lowname} node(s) emulated for ORT's CPU provider: fp32 math "
                         f"between explicit Casts, every tensor rounded to {lowname} (convert with "
                         "target=tensorrt for the pure typed graph)")
