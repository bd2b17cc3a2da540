"""``WORKDIR/report.html``: one self-contained page (inline CSS and SVG, no script, no network).

Sections: verdict, pipeline (stage, status, time, artifact, size), fusion (what was fused, what was
left and why), precision plan, parity per runtime and per verified shape, the per-normalization error
along the graph (an inline SVG plot, log scale, tolerance line), invariance, and the certificate.
The layout is one column that reflows: tables scroll sideways on a phone instead of shrinking text.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

_CSS = """
:root{--ok:#17803d;--bad:#b42318;--muted:#5b6270;--line:#e4e7ec;font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif}
body{margin:0 auto;max-width:980px;padding:12px 16px 48px;color:#101828;line-height:1.45}
h1{font-size:1.4rem;margin:.4em 0}h2{font-size:1.1rem;margin:1.6em 0 .5em;border-bottom:1px solid var(--line)}
.verdict{padding:12px 14px;border-radius:8px;font-weight:600;font-size:1.05rem;word-break:break-word}
.verdict.ok{background:#ecfdf3;color:var(--ok)}.verdict.bad{background:#fef3f2;color:var(--bad)}
.verdict.warn{background:#fffaeb;color:#93370d}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.passed,.reused{color:var(--ok);font-weight:600}.failed{color:var(--bad);font-weight:600}.skipped,.na,.notrun{color:var(--muted)}
.meta{color:var(--muted);font-size:.85rem}pre{background:#f8f9fb;padding:10px;border-radius:6px;overflow-x:auto;font-size:.8rem}
svg{max-width:100%;height:auto}
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(v, fmt="{:.3g}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else _e(v)


def _table(head: list[str], rows: list[list[str]], num_cols=()) -> str:
    """``rows`` hold ready HTML cells (escape before)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in num_cols else ''}>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _status(s: str) -> str:
    cls = {"n/a": "na", "not run": "notrun"}.get(s, s)
    return f'<span class="{_e(cls)}">{_e(s)}</span>'


def _size(n) -> str:
    if not isinstance(n, int):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def norm_error_svg(norms: list[dict], atol: float | None, width=720, height=260) -> str:
    """Max |error| of each normalization in graph order, log scale; red points failed."""
    vals = [n.get("stats", {}).get("max_abs") for n in norms]
    pts = [(i, v) for i, v in enumerate(vals) if isinstance(v, (int, float)) and math.isfinite(v)]
    if not pts:
        return '<p class="meta">No normalization output was compared.</p>'
    floor = 1e-12
    logs = [math.log10(max(v, floor)) for _, v in pts] + ([math.log10(atol)] if atol else [])
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    hi = hi if hi > lo else lo + 1
    ml, mr, mt, mb = 56, 12, 12, 36
    pw, ph = width - ml - mr, height - mt - mb
    n = max(len(norms) - 1, 1)

    def x(i):
        return ml + pw * (i / n if len(norms) > 1 else 0.5)

    def y(v):
        return mt + ph * (hi - math.log10(max(v, floor))) / (hi - lo)

    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="error per normalization" '
             f'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">']
    for d in range(lo, hi + 1):
        yy = mt + ph * (hi - d) / (hi - lo)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e4e7ec"/>'
                     f'<text x="{ml - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#5b6270">1e{d}</text>')
    if atol:
        ya = y(atol)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{ya:.1f}" y2="{ya:.1f}" stroke="#b42318" '
                     f'stroke-dasharray="5 4"/><text x="{ml + pw}" y="{ya - 4:.1f}" text-anchor="end" '
                     f'fill="#b42318">atol {atol:g}</text>')
    line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts)
    parts.append(f'<polyline points="{line}" fill="none" stroke="#2e90fa" stroke-width="1.5"/>')
    for (i, v), norm in zip(pts, [norms[i] for i, _ in pts]):
        color = "#17803d" if norm.get("passed") else "#b42318"
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}">'
                     f'<title>{_e(norm.get("module_path"))} #{_e(norm.get("call", 0))}: max|err| {v:.3g}</title></circle>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" fill="#5b6270">'
                 f'normalizations in graph order (1..{len(norms)})</text></svg>')
    return "".join(parts)


def render(run, result) -> str:
    check = run.reports.get("check") or _read(run.path("check") / "report.json")
    fuse = _read(run.path("fuse.json"))
    conv = _read(run.path("convert.json")) if run.options.precision != "fp32" else {}
    cert = result.certificate or {}
    cls = "ok" if result.passed and result.packaged else ("warn" if result.passed else "bad")
    out = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>ln_deploy: {_e(run.name)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(run.name)} <span class=meta>{_e(run.spec)}</span></h1>",
           f'<div class="verdict {cls}" id="verdict">{_e(result.verdict)}</div>',
           f'<p class="meta">precision {_e(run.options.precision)} · target {_e(run.options.target)} · '
           f'{result.seconds:.1f} s · work folder {_e(run.workdir)}</p>']

    out.append("<h2>Pipeline</h2>")
    out.append(_table(["stage", "status", "time", "artifact", "size", "detail"], [
        [_e(r["stage"]), _status(r["status"]), f'{r["seconds"]:.1f} s' if r["seconds"] else "",
         _e(Path(r["artifact"]).name if r.get("artifact") else ""), _size(r.get("size")), _e(r.get("detail", ""))]
        for r in result.stages], num_cols=(2, 4)))

    out.append("<h2>Fusion</h2>")
    if fuse:
        fused = ", ".join(f"{v} {k}" for k, v in (fuse.get("fused") or {}).items() if v) or "nothing"
        out.append(f"<p>Fused: {_e(fused)} ({_e(fuse.get('nodes_before'))} → {_e(fuse.get('nodes_after'))} nodes, "
                   f"opset {_e(fuse.get('opset_before'))} → {_e(fuse.get('opset_after'))}).</p>")
        rej = fuse.get("rejected") or []
        if rej:
            out.append("<p>Left as they are, with the reason:</p>")
            out.append(_table(["rule", "where", "reason"], [
                [_e(r.get("rule")), _e(r.get("anchor") or r.get("node") or ", ".join(r.get("nodes", [])[:3])),
                 _e(r.get("reason"))] for r in rej[:200]]))
        for note in fuse.get("notes") or []:
            out.append(f'<p class="meta">{_e(note)}</p>')
    else:
        out.append('<p class="meta">The fuse stage did not run.</p>')

    out.append("<h2>Precision plan</h2>")
    if conv:
        out.append(f"<p>{_e(conv.get('low_nodes'))}/{_e(conv.get('nodes'))} nodes in {_e(conv.get('precision'))}; "
                   f"{len(conv.get('fp32_nodes') or [])} kept in fp32; {_e(conv.get('casts_inserted'))} Casts.</p>")
        if conv.get("normalizations"):
            out.append(_table(["normalization", "form", "handling"], [
                [_e(n.get("module") or n.get("name")), _e(f"{n.get('form')} {n.get('kind')}"), _e(n.get("handling"))]
                for n in conv["normalizations"]]))
        if conv.get("fp32_nodes"):
            out.append(_table(["kept in fp32", "op", "reason"], [
                [_e(n.get("node")), _e(n.get("op_type")), _e(n.get("reason"))] for n in conv["fp32_nodes"][:200]]))
    else:
        out.append(f'<p class="meta">{"fp32: no conversion." if run.options.precision == "fp32" else "The convert stage did not run."}</p>')

    out.append("<h2>Parity</h2>")
    if check:
        rows = []
        for comp in check.get("comparisons", []):
            for o, v in comp.get("outputs", {}).items():
                st = v.get("stats", {})
                rows.append([_e(comp["runner"]), _e(o), _num(st.get("max_abs")), _num(st.get("p99_abs")),
                             _status("passed" if v.get("passed") else "failed")])
        out.append(_table(["runtime", "output", "max |err|", "p99 |err|", "result"], rows, num_cols=(2, 3)))
        shapes = cert.get("verified_shapes") or _shapes(check)
        if shapes:
            out.append("<p>Verified shapes:</p>")
            out.append(_table(["#", "inputs", "outputs", "result"], [
                [str(i + 1), _e(", ".join(f"{k} {v}" for k, v in (s.get("inputs") or {}).items())),
                 _e(", ".join(f"{k} {v}" for k, v in (s.get("outputs") or {}).items())),
                 _status("passed" if s.get("passed", True) else "failed")] for i, s in enumerate(shapes)]))
        for r in check.get("runners", []):
            if r.get("status") == "skipped":
                out.append(f'<p class="meta">{_e(r.get("name"))} skipped: {_e(r.get("reason"))}</p>')
        for note in check.get("notes", []):
            out.append(f'<p class="meta">{_e(note)}</p>')
    else:
        out.append('<p class="meta">The check stage did not run.</p>')

    out.append("<h2>Error per normalization</h2>")
    loc = (check or {}).get("localisation") or {}
    atol = next((c.get("atol") for c in ((check or {}).get("tolerances") or {}).get("checks", [])), None)
    if not loc:
        out.append('<p class="meta">Localisation did not run.</p>')
    for runner, data in loc.items():
        norms = data.get("norms") or []
        out.append(f"<p><b>{_e(runner)}</b>: {len(norms)} normalization output(s) compared.</p>")
        out.append(norm_error_svg(norms, atol))
        fd = check.get("first_divergence")
        if fd and fd.get("runner") == runner:
            out.append(f'<p class="failed">First divergence: {_e(fd.get("module_path"))} ({_e(fd.get("module_class"))}), '
                       f'max |err| {_num(fd.get("stats", {}).get("max_abs"))}</p>')
        for note in data.get("notes") or []:
            out.append(f'<p class="meta">{_e(note)}</p>')

    out.append("<h2>Invariance</h2>")
    inv = (check or {}).get("invariance") or []
    out.append(_table(["check", "runtime", "result", "message"], [
        [_e(r.get("check")), _e(r.get("runtime")), _status(r.get("status", "")), _e(r.get("message"))] for r in inv])
               if inv else '<p class="meta">No invariance check ran.</p>')

    out.append("<h2>Certificate</h2>")
    if cert:
        out.append(f"<p>parity.json in {_e(result.model_dir)}; re-check it with "
                   f"<code>ln-deploy verify {_e(result.model_dir)}</code>.</p>")
        out.append(f"<pre>{_e(json.dumps(cert, indent=2))}</pre>")
    else:
        out.append('<p class="meta">No certificate: nothing was packaged.</p>')
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(run, result) -> Path:
    from ..fileio import write_text_atomic

    return write_text_atomic(run.path("report.html"), render(run, result))


def _shapes(check: dict) -> list:
    from .certificate import verified_shapes

    return verified_shapes(check)


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
