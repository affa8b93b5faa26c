"""Offline interactive Altair charts for the book: a vega-embed bundle served from `_static/`, no CDN.

`setup()` in a chapter registers a renderer that emits a div plus a call to the bundled `vegaEmbed`
(ids are derived from the spec, so re-executions produce identical outputs for nbval).
"""

from __future__ import annotations

import hashlib
import json
from html import escape
from pathlib import Path

import altair as alt
import pandas as pd

BUNDLE = "vega-bundle.js"


def write_bundle(static_dir: str | Path) -> Path:
    """Write vl-convert's self-contained vega/vega-lite/vega-embed bundle, wrapped in an IIFE (its
    top-level names would otherwise collide with Sphinx's globals)."""
    import vl_convert as vlc

    path = Path(static_dir) / BUNDLE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "(function(){\n" + vlc.javascript_bundle() + "\n})();\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _render(spec: dict, **_kw) -> dict:
    payload = json.dumps(spec, sort_keys=True)
    cid = "atlas-chart-" + hashlib.blake2b(payload.encode(), digest_size=6).hexdigest()
    html = (
        f'<div id="{cid}" class="atlas-chart"></div>\n<script>(function(){{var spec={payload};'
        f'function draw(){{if(!window.vegaEmbed){{return setTimeout(draw,50);}}'
        f'window.vegaEmbed("#{cid}",spec,{{actions:false}}).catch(function(e){{'
        f'document.getElementById("{cid}").textContent="chart error: "+e;}});}}draw();}})();</script>'
    )
    return {"text/html": html, "text/plain": f"<atlas chart {cid}>"}


def table_html(df: pd.DataFrame) -> str:
    """A data frame as the book shows it: every cell in full, each text-heavy column (claims, reasons) given a
    minimum width that keeps it a paragraph instead of a ribbon of short lines, inside a box that scrolls
    sideways on a narrow screen instead of the page. Rows past pandas' display.max_rows are elided as usual."""
    n = pd.get_option("display.max_rows")
    shown = df if n is None or len(df) <= n else pd.concat([df.head(n // 2), df.tail(n // 2)])
    html = shown.to_html(classes="atlas-table", border=0, na_rep="")
    for c in df.columns:
        if not isinstance(c, str):
            continue
        lengths = df[c].astype(str).str.len()
        typical = lengths.quantile(0.75) if len(lengths) else 0  # a sparse column of notes counts by its notes
        if (df[c].dtype == object or pd.api.types.is_string_dtype(df[c])) and max(typical, lengths.max() / 2) > 24:
            em = int(min(30, max(12, max(typical, lengths.max() / 2) * 0.4)))
            html = html.replace(f"<th>{escape(c)}</th>", f'<th style="min-width: {em}em">{escape(c)}</th>', 1)
    more = f"<p>{len(df)} rows, {len(shown)} shown</p>" if len(shown) < len(df) else ""
    return f'<div class="atlas-table-box">{html}</div>{more}'


def setup() -> None:
    """Use the offline renderer, allow data sets larger than Altair's 5000-row default, and show tables with
    every cell in full (`table_html`); their text form, which nbval compares, is pandas' own."""
    alt.renderers.register("atlas", _render)
    alt.renderers.enable("atlas")
    alt.data_transformers.disable_max_rows()
    pd.set_option("display.max_colwidth", None)
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, table_html)


def ordinal_x(field: str = "layer") -> alt.X:
    """An ordinal x axis for integers such as layers: horizontal labels, every other one dropped until
    they do not overlap (30 layers in a narrow panel read 0, 4, 8, ... instead of a smear)."""
    return alt.X(f"{field}:O", axis=alt.Axis(labelAngle=0, labelOverlap="parity"))


def heatmap(df, x: str, y: str, color: str, facet: str | None = None, tooltip=None, scheme: str = "viridis",
            width: int = 260, height: int = 180, columns: int = 3, row=None, column=None,
            scale: dict | None = None) -> alt.Chart:
    """A rect heatmap (x ordinal, y ordinal for integers else nominal), optionally one panel per `facet`
    value (wrapped in `columns`) or a `row` x `column` grid (field names, or alt.Row/alt.Column for a sort);
    `scale` adds colour-scale options (type, domain, reverse)."""
    panels = [f for f in (facet, row, column) if isinstance(f, str)]
    chart = alt.Chart(df).mark_rect().encode(
        x=ordinal_x(x) if df[x].dtype.kind in "iu" else alt.X(f"{x}:N"),
        y=alt.Y(f"{y}:O" if df[y].dtype.kind in "iu" else f"{y}:N"),
        color=alt.Color(f"{color}:Q", scale=alt.Scale(scheme=scheme, **(scale or {}))),
        tooltip=tooltip or [x, y, *panels, alt.Tooltip(f"{color}:Q", format=".3f")],
    ).properties(width=width, height=height)
    if facet:
        return chart.facet(facet=f"{facet}:N", columns=columns)
    grid = {k: (f"{v}:N" if isinstance(v, str) else v) for k, v in (("row", row), ("column", column)) if v is not None}
    return chart.facet(**grid) if grid else chart


def bars_with_ci(df, x: str, y: str, lo: str, hi: str, color: str | None = None, width: int = 520,
                 height: int = 220) -> alt.LayerChart:
    """Point estimates (nominal x) with CI whiskers from the `lo`/`hi` columns."""
    base = alt.Chart(df).encode(x=alt.X(f"{x}:N", sort=None))
    enc = {"color": f"{color}:N"} if color else {}
    pts = base.mark_point(filled=True, size=60).encode(y=alt.Y(f"{y}:Q", title=y), tooltip=[x, y, lo, hi], **enc)
    bars = base.mark_rule().encode(y=alt.Y(f"{lo}:Q", title=y), y2=f"{hi}:Q", **enc)
    return (bars + pts).properties(width=width, height=height)


def line_with_ci(df, x: str, y: str, lo: str, hi: str, color: str | None = None, width: int = 520,
                 height: int = 220) -> alt.LayerChart:
    """A line over a quantitative x (e.g. layer, alpha) with a shaded CI band from the `lo`/`hi` columns."""
    base = alt.Chart(df).encode(x=alt.X(f"{x}:Q"))
    enc = {"color": f"{color}:N"} if color else {}
    band = base.mark_area(opacity=0.25).encode(y=alt.Y(f"{lo}:Q", title=y), y2=f"{hi}:Q", **enc)
    line = base.mark_line(point=True).encode(y=alt.Y(f"{y}:Q", title=y), tooltip=[x, y, lo, hi, *([color] if color else [])],
                                             **enc)
    return (band + line).properties(width=width, height=height)
