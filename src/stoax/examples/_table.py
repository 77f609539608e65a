"""The examples' result tables: text columns, the first left-aligned, the rest right-aligned."""

from __future__ import annotations

__all__ = ["align_table"]


def align_table(header: list[str], body: list[list[str]]) -> str:
    """``header`` and ``body`` rows as aligned text, two spaces between columns.

    Example:
        >>> print(align_table(["run", "loss"], [["dropout", "0.10"], ["none", "0.125"]]))
        run       loss
        dropout   0.10
        none     0.125
    """
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join(line(row) for row in rows)
