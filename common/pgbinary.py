"""PostgreSQL's binary COPY stream, read without a database: its tuples, the LangChain
column types decoded to the text PostgreSQL prints for them, and CSV written exactly as
COPY writes CSV.

Stream: an 11-byte signature, flags and header-extension length (int32 each), then per
tuple an int16 field count and per field an int32 length (-1 for NULL) and the bytes;
an int16 -1 ends it. Types: uuid (16 bytes), text and varchar (UTF-8), json (its text),
jsonb (version byte 1, then its text), pgvector's vector (int16 dimensions, int16
unused, big-endian float4 each).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import BinaryIO

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + bytes(8)  # flags 0, no header extension: what COPY TO writes
TRAILER = b"\xff\xff"
_I16, _I32 = struct.Struct(">h"), struct.Struct(">i")
_F32 = struct.Struct("<f")


class BinaryCopyError(ValueError):
    """The stream is not a well-formed binary COPY stream."""


def read_tuples(stream: BinaryIO, fields: int) -> Iterator[list[bytes | None]]:
    """Each tuple's fields (None for NULL), checking every tuple has `fields` of them
    and the stream ends with its trailer and nothing after it."""
    head = _exactly(stream, 19)
    if head[:11] != SIGNATURE:
        raise BinaryCopyError("not a PostgreSQL binary COPY file (no PGCOPY signature)")
    flags, extension = struct.unpack(">ii", head[11:])
    if flags & (1 << 16) or extension < 0:
        raise BinaryCopyError("unsupported binary COPY header (OIDs or a malformed extension)")
    _exactly(stream, extension)
    read = stream.read
    while True:
        (count,) = _I16.unpack(_exactly(stream, 2))
        if count == -1:
            if read(1):
                raise BinaryCopyError("data after the binary COPY trailer")
            return
        if count != fields:
            raise BinaryCopyError(f"a tuple has {count} fields, the table has {fields}")
        row: list[bytes | None] = []
        for _ in range(count):
            (length,) = _I32.unpack(_exactly(stream, 4))
            row.append(None if length == -1 else _exactly(stream, length))
        yield row


def _exactly(stream: BinaryIO, size: int) -> bytes:
    if size < 0:
        raise BinaryCopyError("a negative field length")
    data = stream.read(size)
    if len(data) != size:
        raise BinaryCopyError("the binary COPY file ends in the middle of a tuple")
    return data


def decoder(column_type: str) -> Callable[[bytes], str]:
    """The text of a field of `column_type` (as `format_type` names it). A type this
    reader does not know, or a field its type cannot hold, is a `BinaryCopyError`: both
    come from a backup directory, which is hostile input."""
    base = column_type.split("(", 1)[0].strip().lower()
    if base not in DECODERS:
        raise BinaryCopyError(f"no binary decoder for column type {column_type[:60]!r}")
    decode = DECODERS[base]

    def checked(data: bytes) -> str:
        try:
            return decode(data)
        except (ValueError, struct.error) as exc:
            raise BinaryCopyError(f"a {base} field that is not one: {exc}") from None

    return checked


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def _uuid(data: bytes) -> str:
    return str(uuid.UUID(bytes=data))


def _jsonb(data: bytes) -> str:
    if data[:1] != b"\x01":
        raise BinaryCopyError("unknown jsonb binary version")
    return data[1:].decode("utf-8")


def _vector(data: bytes) -> str:
    dimensions, _ = struct.unpack_from(">hh", data, 0)
    values = struct.unpack_from(f">{dimensions}f", data, 4)
    return "[" + ",".join(map(float4_text, values)) + "]"


DECODERS: dict[str, Callable[[bytes], str]] = {
    "uuid": _uuid,
    "text": _text,
    "character varying": _text,
    "varchar": _text,
    "json": _text,
    "jsonb": _jsonb,
    "vector": _vector,
}


def float4_text(value: float) -> str:
    """A float4 as PostgreSQL (and pgvector) prints it: the shortest decimal strictly
    inside its rounding interval (Ryu without STRICTLY_SHORTEST: a decimal on the bound
    is never chosen), plain for exponents in [-4, 6), else `d.ddde+XX`."""
    if value == 0.0:
        return "-0" if _F32.pack(value)[3] & 0x80 else "0"
    if value != value:
        return "NaN"
    if value in (_INF, -_INF):
        return "Infinity" if value > 0 else "-Infinity"
    if not _bits(value) & 0x7FFFFF:
        return _exact_text(value)  # a power of two: its interval is lopsided
    low, high = 1, 9  # with a symmetric interval, "k digits read back" is monotone in k
    while low < high:
        middle = (low + high) // 2
        if _reads_back(f"{value:.{middle - 1}e}", value):
            high = middle
        else:
            low = middle + 1
    mantissa, exponent = f"{value:.{low - 1}e}".split("e")
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    return ("-" if mantissa[0] == "-" else "") + _layout(digits, int(exponent))


_INF = float("inf")


def _bits(value: float) -> int:
    return struct.unpack("<I", _F32.pack(value))[0]


def _float4(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def _reads_back(text: str, value: float) -> bool:
    """Whether `text` lies strictly inside `value`'s float4 rounding interval."""
    double = float(text)
    try:
        single = _F32.unpack(_F32.pack(double))[0]
    except OverflowError:
        return False
    if double != single:
        neighbour = _toward(single, double)
        if neighbour is not None and (single + neighbour) / 2 == double:
            exact = Fraction(text)
            if exact == Fraction(double):
                return False  # on the bound: never chosen
            single = neighbour if (exact > Fraction(double)) == (neighbour > single) else single
    return single == value


def _toward(a: float, b: float) -> float | None:
    bits = _bits(a)
    upward = bits + 1 if (b > a) == (a > 0) else bits - 1
    step = (1 if b > 0 else 0x80000001) if a == 0.0 else upward
    try:
        return _float4(step)
    except OverflowError:
        return None


def _exact_text(value: float) -> str:
    """The same choice made with exact fractions: closest to the value, ties to even."""
    magnitude = abs(value)
    bits, exact = _bits(magnitude), Fraction(magnitude)
    below = Fraction(_float4(bits - 1)) if bits > 1 else Fraction(0)
    above = Fraction(2) ** 128 if bits == 0x7F7FFFFF else Fraction(_float4(bits + 1))
    low, high = (below + exact) / 2, (exact + above) / 2
    power = 0
    while Fraction(10) ** power > exact:
        power -= 1
    while Fraction(10) ** (power + 1) <= exact:
        power += 1
    for digits in range(1, 10):
        scale = Fraction(10) ** (power - digits + 1)
        floor = int(exact / scale)
        fits = [(abs(c * scale - exact), c % 2, c) for c in (floor, floor + 1) if low < c * scale < high]
        if fits:
            chosen = str(min(fits)[2])
            exponent = power - digits + len(chosen)
            return ("-" if value < 0 else "") + _layout(chosen.rstrip("0") or "0", exponent)
    raise AssertionError(value)


def _layout(digits: str, exponent: int) -> str:
    """d1.d2d3... times 10^exponent, laid out as PostgreSQL's float output does."""
    if -4 <= exponent < 6:
        if exponent < 0:
            return "0." + "0" * (-exponent - 1) + digits
        if len(digits) <= exponent + 1:
            return digits + "0" * (exponent + 1 - len(digits))
        return digits[: exponent + 1] + "." + digits[exponent + 1 :]
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"


def csv_line(row: list[str | None]) -> str:
    """A row as COPY writes CSV: NULL empty and unquoted; a value quoted
    (quotes doubled) when it is empty or holds a comma, quote, CR or LF, or is `\\.` alone
    in a one-column table. Python's csv module cannot tell NULL from '' (3.11)."""
    alone = len(row) == 1
    return ",".join(_csv_field(value, alone) for value in row) + "\n"


def _csv_field(value: str | None, alone: bool) -> str:
    if value is None:
        return ""
    if value == "" or any(c in value for c in ',"\n\r') or (alone and value == "\\."):
        return '"' + value.replace('"', '""') + '"'
    return value
