"""The status page's charts: inline SVG, no script, readable from a phone to a desktop.

Chart text is drawn in SVG units, so its size on screen follows the chart's
width; the page's CSS (:func:`css`) makes it larger in those units as the
screen narrows (FONT_STEPS), so that from 390 CSS px up it is never below
11 px. Every chart is laid out for the largest of those sizes (FONT), so
nothing overlaps or leaves the chart at any of them; on a desktop its text
has room to spare.

Series are told apart by name and place, not by colour alone: a chart of
several series draws one panel a series (small multiples), each named.
Every point and bar says its figures in a <title> that a screen reader
reaches: a chart is a graphics document of symbols, not one image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

W = 720           # a chart's width in SVG units: its width in CSS px on a desktop
DESKTOP_FONT = 13  # chart text where the chart is W px wide
# (viewport width up to, font size in SVG units): at the narrowest viewport
# of a step, size * (viewport - PAGE_MARGIN) / W >= 11 CSS px.
FONT_STEPS = ((760, 15), (560, 20), (420, 26))
PAGE_MARGIN = 24  # the page's padding left and right, in CSS px
FONT = max(size for _, size in FONT_STEPS)  # what the layout leaves room for
LINE = 32         # a line of text of size FONT
CHAR = 17         # the average advance of a character at FONT (digits, DejaVu Sans)
AXIS = "#767676"  # 4.5:1 on white: axes are needed to read a chart (WCAG 1.4.11 asks 3:1)
PANEL = 72        # a panel's height
GAP = 14          # between a panel and the next one's name
EDGE = 8          # the margin around the drawing


def css() -> str:
    """The CSS of the charts' text: larger in SVG units on narrower screens."""
    rules = [f"svg text{{font:{DESKTOP_FONT}px sans-serif;fill:#333}}",
             "svg .axis-title{font-weight:600}"]
    # Widest first: a narrower screen's rule comes later and wins.
    rules += [f"@media (max-width:{width}px){{svg text{{font-size:{size}px}}}}"
              for width, size in FONT_STEPS]
    return "\n".join(rules)


@dataclass
class Series:
    """One series of a chart: its name, its panel's words, its values and their words."""

    name: str
    label: str
    values: list[int]
    color: str
    titles: list[str]                 # each value in words (the point's or bar's <title>)
    attrs: list[dict] = field(default_factory=list)  # each value's data- attributes


def panels(ident: str, label: str, described_by: str, kind: str, series: list[Series],
           x_ends: tuple[str, str], x_title: str, y_title: str) -> str:
    """One panel a series, on one scale: a line ('line') or bars ('bar') of its values,
    named above it, with the first and the last X_ENDS under the last panel."""
    top = max([1] + [v for s in series for v in s.values])
    left = CHAR * len(f"{top:,}") + 3 * EDGE  # the ticks' room, left of the panels
    right = W - EDGE
    parts = [_text(left, FONT, y_title, "axis-title")]
    panel_top = FONT + LINE + 10
    for one in series:
        bottom = panel_top + PANEL
        parts.append(_text(left, panel_top - 10, one.label, "series-label",
                           {"series": one.name}))
        parts.append(_text(left - EDGE, panel_top + round(FONT * 0.8), f"{top:,}", anchor="end"))
        parts.append(_text(left - EDGE, bottom, "0", anchor="end"))
        parts.append(f'<path class="axis" d="M{left} {panel_top}V{bottom}H{right}" fill="none"'
                     f' stroke="{AXIS}" vector-effect="non-scaling-stroke"/>')
        parts.extend((_line if kind == "line" else _bars)(one, left, right, bottom, top))
        panel_top = bottom + LINE + GAP
    bottom = panel_top - LINE - GAP
    parts.append(_text(left, bottom + LINE + 4, x_ends[0]))
    parts.append(_text(right, bottom + LINE + 4, x_ends[1], anchor="end"))
    parts.append(_text((left + right) // 2, bottom + 2 * LINE + 8, x_title, "axis-title",
                       anchor="middle"))
    return _svg(ident, label, described_by, bottom + 2 * LINE + 20, parts)


def _line(one: Series, left: int, right: int, bottom: int, top: int) -> list[str]:
    span = max(1, len(one.values) - 1)
    points = [(left + (right - left) * i / span, bottom - PANEL * v / top)
              for i, v in enumerate(one.values)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    line = (f'<polyline class="series" fill="none" stroke="{one.color}" stroke-width="2"'
            f' vector-effect="non-scaling-stroke" points="{path}"/>')
    return ([line]
            + [(f'<circle class="point" role="graphics-symbol" cx="{x:.1f}" cy="{y:.1f}" r="3"'
                f' fill="{one.color}"{_data(attrs)}><title>{escape(title)}</title></circle>')
               for (x, y), title, attrs in zip(points, one.titles, _each(one))])


def _bars(one: Series, left: int, right: int, bottom: int, top: int) -> list[str]:
    slot = (right - left) / max(1, len(one.values))
    return [f'<rect class="bar" role="graphics-symbol" x="{left + i * slot + 1:.1f}"'
            f' y="{bottom - PANEL * v / top:.1f}" width="{max(slot - 2, 1):.1f}"'
            f' height="{PANEL * v / top:.1f}" fill="{one.color}"{_data(attrs)}>'
            f"<title>{escape(title)}</title></rect>"
            for i, (v, title, attrs) in enumerate(zip(one.values, one.titles, _each(one))) if v]


def hbars(ident: str, label: str, described_by: str, items: list[tuple[str, int, str, dict]],
          words, x_title: str, color: str) -> str:
    """Horizontal bars, (name, value, title, data attributes) an item: each name on a line
    of its own, its bar under it and the value in WORDS (a function) after the bar."""
    top = max([1] + [value for _, value, _, _ in items])
    room = W - 2 * EDGE - 8 * CHAR - EDGE  # the longest bar leaves room for its words
    row = LINE + 26 + GAP
    parts = []
    for i, (name, value, title, attrs) in enumerate(items):
        row_top = EDGE + i * row
        width = room * value / top
        parts.append(_text(EDGE, row_top + round(FONT * 0.9), name[-40:]))
        parts.append(f'<rect class="bar" role="graphics-symbol" x="{EDGE}"'
                     f' y="{row_top + LINE + 6}" width="{width:.1f}" height="20" fill="{color}"'
                     f' data-value="{value}"{_data(attrs)}><title>{escape(title)}</title></rect>')
        parts.append(_text(round(EDGE + width + EDGE), row_top + LINE + 26, words(value)))
    end = EDGE + len(items) * row
    parts.append(f'<path class="axis" d="M{EDGE} {EDGE}V{end - GAP}" stroke="{AXIS}"'
                 ' vector-effect="non-scaling-stroke"/>')
    parts.append(_text(EDGE, end + LINE, x_title, "axis-title"))
    return _svg(ident, label, described_by, end + LINE + 16, parts)


def _svg(ident: str, label: str, described_by: str, height: int, parts: list[str]) -> str:
    # Not role="img": that would hide every point's <title> from screen readers.
    return (f'<svg id="{ident}" viewBox="0 0 {W} {height}" role="graphics-document"'
            f' aria-label="{escape(label)}" aria-describedby="{described_by}">'
            + "".join(parts) + "</svg>")


def _text(x: float, y: float, words: str, cls: str = "", data: dict | None = None,
          anchor: str = "start") -> str:
    attributes = f' class="{cls}"' if cls else ""
    attributes += f' text-anchor="{anchor}"' if anchor != "start" else ""
    return f'<text x="{x}" y="{y}"{attributes}{_data(data or {})}>{escape(words)}</text>'


def _each(one: Series) -> list[dict]:
    return one.attrs or [{} for _ in one.values]


def _data(attrs: dict) -> str:
    return "".join(f' data-{k}="{escape(str(v))}"' for k, v in attrs.items())
