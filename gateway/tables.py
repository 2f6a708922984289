"""Plain-text tables for terminals and reports."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]], left: int) -> list[str]:
    """Columns as wide as their widest cell, header included (nothing cut): the first
    ``left`` columns aligned left (names), the others right (figures)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(row) for row in rows)]
