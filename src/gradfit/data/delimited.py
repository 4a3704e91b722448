"""Delimited text (CSV, TSV, semicolon, whitespace) -> typed columns, with the standard library.

Files as people have them: UTF-8 with or without a BOM, UTF-16 (Excel's "Unicode text"),
``np.savetxt`` output whose header is a ``# x,y`` comment, a delimiter at the end of every
line, empty trailing rows, quoted thousands separators (``"1,012.6"``) and, in files not
delimited by commas, decimal commas (``1,5``). Every column comes back typed:

- all cells integers (no empty cell) -> int64, so integer ids stay integers (but zero-padded
  labels such as ``007`` stay text, as written);
- all cells numbers or missing (empty, nan, NA, N/A, #N/A, null, none) -> float64;
- anything else -> text: an object array of the stripped cell strings. Whether a text column
  may be used is decided by whoever uses it (:func:`gradfit.data.io.numeric_columns`).

One rule for the decimal sign per file: comma-delimited files use decimal points (a comma in
a number is a thousands separator, which only a quoted cell can hold); other files use
decimal commas when a number shows one (``1,5``, ``0,125``, ``1.012,6``) and decimal points
otherwise. A file that shows both, or only numbers like ``1,500`` in a tab- or
space-delimited file, is refused with a DataError: the reading would be a guess.
"""

from __future__ import annotations

import csv
import io
import math
import re

import numpy as np

from ..errors import DataError

__all__ = ["decode_text", "check_duplicate_names", "read_delimited", "infer_column", "parse_number", "MISSING"]

#: cell texts (lower case, stripped) read as a missing value (NaN)
MISSING = frozenset({"", "nan", "na", "n/a", "#n/a", "null", "none"})

_INT = re.compile(r"^[+-]?\d+$")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")
_DOT_DECIMAL = re.compile(r"^[+-]?(\d*\.\d+|\d+\.)([eE][+-]?\d+)?$")
_COMMA_DECIMAL = re.compile(r"^[+-]?(\d*,\d+|\d+,)([eE][+-]?\d+)?$")
_US_GROUPED = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?([eE][+-]?\d+)?$")  # 1,012.6
_EU_GROUPED = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+(,\d*)?([eE][+-]?\d+)?$")  # 1.012,6
_GROUPS_ONLY_COMMA = re.compile(r"^[+-]?[1-9]\d{0,2}(,\d{3})+$")  # 1,500: 1.5 or 1500?
_GROUPS_ONLY_DOT = re.compile(r"^[+-]?[1-9]\d{0,2}(\.\d{3})+$")  # 1.500 likewise
_CANDIDATES = ("\t", ";", ",", "|")


def decode_text(raw: bytes, source: str) -> str:
    """File bytes -> text: a BOM picks UTF-8/16/32; UTF-16 without a BOM is recognised by its
    zero bytes; otherwise UTF-8. DataError (naming the line) for anything else."""
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xef\xbb\xbf", "utf-8-sig"),
                       (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if raw.startswith(bom):
            try:
                return raw.decode(codec)
            except UnicodeDecodeError:
                raise DataError(f"{source}: starts like {codec.upper()} text but is not valid {codec.upper()}; "
                                "save it as UTF-8 CSV") from None
    head = raw[:4096]
    if b"\x00" in head:
        even, odd = head[0::2], head[1::2]
        codec = "utf-16-le" if odd.count(0) > 0.9 * len(odd) and even.count(0) == 0 else (
            "utf-16-be" if even.count(0) > 0.9 * len(even) and odd.count(0) == 0 else None)
        if codec is None:
            raise DataError(f"{source}: looks like a binary file, not CSV text; gradfit reads CSV/TSV text, "
                            ".npz, .parquet, .feather and .xlsx")
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            raise DataError(f"{source}: looks like UTF-16 text but does not decode; save it as UTF-8 CSV") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{source}: line {line} is not valid UTF-8 text; save the file as UTF-8") from None


def read_delimited(text: str, source: str) -> dict[str, np.ndarray]:
    """Delimited text with a header row -> {name: typed column} (see the module docstring).

    Blank lines and ``#`` comment lines are skipped; a last comment line right before
    headerless numeric data (``np.savetxt(..., header='x,y')``) is the header.
    """
    lines: list[str] = []
    last_comment = None
    for ln in text.splitlines():
        if not ln.strip():
            continue
        if ln.lstrip().startswith("#"):
            if not lines:
                last_comment = ln.lstrip()[1:]
            continue
        lines.append(ln)
    if not lines:
        raise DataError(f"{source}: the file is empty; expected a header row and data rows")
    delimiter = _sniff_delimiter(lines)
    rows = _split_all(lines, delimiter)
    header = [h.strip() for h in rows[0]]
    if _all_numeric(header) and last_comment is not None:
        named = [h.strip() for h in _split(last_comment, delimiter)]
        if len(_trim(named)) == len(_trim(header)) and not _all_numeric(named):
            header, rows = named, [header, *rows]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]  # rows of empty cells ("trailing rows")
    header, body = _drop_trailing_delimiter(header, body)
    if any(not h for h in header):
        raise DataError(f"{source}: the header row has an empty column name (column {header.index('') + 1})")
    check_duplicate_names(header, source)
    if _all_numeric(header):
        raise DataError(f"{source}: the first row must name the columns, e.g. 'x,y'")
    if not body:
        raise DataError(f"{source}: has a header but no data rows")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{source}: row {i} has {len(row)} fields, the header has {len(header)}")
    cells = [[c.strip() for c in col] for col in zip(*body)]
    comma = _decimal_comma(cells, delimiter, source)
    return {h: infer_column(col, decimal_comma=comma) for h, col in zip(header, cells)}


def _split_all(lines: list[str], delimiter: str) -> list[list[str]]:
    """Every line's fields, with one csv reader (a quoted cell never spans lines here)."""
    rows = list(csv.reader(lines, delimiter=delimiter, skipinitialspace=True))
    if delimiter == " ":
        rows = [[c for c in r if c != ""] for r in rows]
    return rows


def _split(line: str, delimiter: str) -> list[str]:
    row = next(csv.reader(io.StringIO(line), delimiter=delimiter, skipinitialspace=True), [])
    if delimiter == " ":
        row = [c for c in row if c != ""]
    return row


def _trim(fields: list[str]) -> list[str]:
    while fields and not fields[-1].strip():
        fields = fields[:-1]
    return fields


def _drop_trailing_delimiter(header: list[str], body: list[list[str]]):
    """A delimiter at the end of every line makes an empty last field: drop it (and an empty
    last header name) when no data row has anything there."""
    n = len(_trim(header))
    if n == len(header) and all(len(r) == n for r in body):
        return header, body
    if all(len(r) <= max(n, len(header)) and not any(c.strip() for c in r[n:]) for r in body):
        return header[:n], [r[:n] for r in body]
    return header, body


def _sniff_delimiter(lines: list[str]) -> str:
    """The candidate (tab, ';', ',', '|') that splits the header and the first data lines into
    the same number (>1) of fields; else the first one in the header; else whitespace when it
    splits every line alike; else none (one column)."""
    sample = lines[:20]
    present = [d for d in _CANDIDATES if d in lines[0]]
    for d in present:
        counts = {len(_trim(_split(ln, d))) for ln in sample}
        if len(counts) == 1 and counts.pop() > 1:
            return d
    if present:
        return present[0]
    # whitespace-delimited (np.savetxt's default) only when every line splits alike: a single
    # column may be named 'Time (s)'
    counts = {len(_split(ln, " ")) for ln in sample}
    return " " if len(counts) == 1 and counts.pop() > 1 else ","


def check_duplicate_names(names: list[str], source: str) -> None:
    """DataError for a column name that appears twice (``source`` names the table)."""
    seen = set()
    for n in names:
        if n in seen:
            raise DataError(f"{source}: duplicate column name {n!r}; rename one of them")
        seen.add(n)


def _all_numeric(cells: list[str]) -> bool:
    cells = [c for c in cells if c.strip()]
    return bool(cells) and all(not math.isnan(parse_number(c, False)) for c in cells)


def _decimal_comma(columns: list[list[str]], delimiter: str, source: str) -> bool:
    """True when the file writes decimal commas (see the module docstring)."""
    if delimiter == "," or not any("," in c for col in columns for c in col):
        return False
    comma = dot = ambiguous = None
    for col in columns:
        for c in col:
            if "," in c:
                if _GROUPS_ONLY_COMMA.match(c):
                    ambiguous = ambiguous or c
                elif _COMMA_DECIMAL.match(c) or _EU_GROUPED.match(c):
                    comma = comma or c
                elif _US_GROUPED.match(c):
                    dot = dot or c
            elif "." in c and not _GROUPS_ONLY_DOT.match(c) and (_DOT_DECIMAL.match(c) or _US_GROUPED.match(c)):
                dot = dot or c
        if comma and dot:
            raise DataError(f"{source}: numbers use both decimal points ({dot!r}) and decimal commas ({comma!r}); "
                            "save the file with one decimal sign")
    if comma:
        return True
    if ambiguous and not dot:
        if delimiter == ";":  # the delimiter of locales that write the decimal comma
            return True
        raise DataError(f"{source}: a number like {ambiguous!r} may be read with a decimal comma or with a "
                        "thousands separator; save the file as CSV with decimal points")
    return False


def parse_number(cell: str, decimal_comma: bool = False) -> float:
    """One cell -> float; NaN for a missing value and for text (check with :data:`MISSING`)."""
    s = cell.strip()
    if s.lower() in MISSING:
        return math.nan
    if decimal_comma:
        if _EU_GROUPED.match(s):
            s = s.replace(".", "")
        s = s.replace(",", ".")
    elif "," in s and _US_GROUPED.match(s):
        s = s.replace(",", "")
    if "_" in s:  # float() reads '1_000'; a data file does not mean that
        return math.nan
    try:
        return float(s)
    except ValueError:
        return math.nan


def infer_column(cells: list[str], *, decimal_comma: bool = False) -> np.ndarray:
    """Stripped cell strings -> int64 (all integers), float64 (numbers and missing values) or
    an object array of the strings (text)."""
    if all(_INT.match(c) for c in cells):
        if any(_LEADING_ZERO.match(c) for c in cells):  # '007' is a label: keep it as written
            return _text(cells)
        try:
            return np.array([int(c) for c in cells], dtype=np.int64)
        except OverflowError:
            pass
    if not decimal_comma:
        try:  # fast path: numpy parses plain numbers in C
            values = np.array(cells, dtype=np.float64)
            if "_" not in "".join(cells):
                return values
        except ValueError:
            pass
    values = np.empty(len(cells))
    for i, c in enumerate(cells):
        v = parse_number(c, decimal_comma)
        if v != v and c.lower() not in MISSING:  # NaN from a cell that is not a missing value: text
            return _text(cells)
        values[i] = v
    return values


def _text(cells: list[str]) -> np.ndarray:
    out = np.empty(len(cells), dtype=object)
    out[:] = cells
    return out
