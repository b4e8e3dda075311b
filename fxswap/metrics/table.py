"""The plain-text table every fxswap report prints (counts, latency, searches, sensitivities)."""
from __future__ import annotations

__all__ = ["render_table"]


def render_table(header: list[str], rows: list[tuple]) -> str:
    """A plain-text table (ints with thousands separators), as every fxswap report prints.

    >>> print(render_table(["block", "params"], [("layer1.0", 1234)]))
    block     params
    --------  ------
    layer1.0   1,234
    """
    cells = [header] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
