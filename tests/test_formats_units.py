"""formats.units: human sizes and LDEV names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats import FormatError, format_ldev, format_size, parse_ldev, parse_size

KIB, MIB, GIB, TIB, PIB = (1 << (10 * k) for k in range(1, 6))


# -- parse_size ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("10B", 10),
        ("1K", KIB),
        ("512M", 512 * MIB),
        ("10G", 10 * GIB),
        ("3T", 3 * TIB),
        ("2P", 2 * PIB),
        ("10g", 10 * GIB),
        ("10k", 10 * KIB),
        ("10KiB", 10 * KIB),
        ("10GiB", 10 * GIB),
        ("10gib", 10 * GIB),
        ("1TiB", TIB),
        ("10GB", 10 * GIB),
        ("10Gi", 10 * GIB),
        (" 10G ", 10 * GIB),
        ("10 G", 10 * GIB),
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "G",
        "abc",
        "-1",
        "-1G",
        "1.5G",
        "10X",
        "10GG",
        "10 G B",
        "10i",
        "10iB",
        "1_000",
        "0x10",
    ],
)
def test_parse_size_rejects_with_message_naming_input(text: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)
    assert "10G" in str(info.value)  # shows an example of what is accepted


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=1 << 70))
def test_format_size_round_trips(n: int) -> None:
    text = format_size(n)
    assert parse_size(text) == n
    assert parse_size(text.lower()) == n


@settings(max_examples=200)
@given(
    st.integers(min_value=1, max_value=1 << 20),
    st.sampled_from(["K", "M", "G", "T", "P"]),
)
def test_format_size_uses_the_largest_exact_unit(count: int, suffix: str) -> None:
    unit = {"K": KIB, "M": MIB, "G": GIB, "T": TIB, "P": PIB}[suffix]
    text = format_size(count * unit)
    assert parse_size(text) == count * unit
    number = int(text.rstrip("KMGTP"))
    # Shortest spelling: the number part is not itself a multiple of 1024.
    assert number % 1024 != 0 or text.endswith("P")


def test_format_size_examples() -> None:
    assert format_size(0) == "0"
    assert format_size(1023) == "1023"
    assert format_size(1024) == "1K"
    assert format_size(1536) == "1536"
    assert format_size(GIB) == "1G"
    assert format_size(1024 * PIB) == "1024P"


# -- parse_ldev / format_ldev -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:1A", 0x1A),
        ("00:1a", 0x1A),
        ("1a:ff", 0x1AFF),
        ("FF:FF", 0xFFFF),
        ("0:0", 0),
        ("26", 26),
        ("0", 0),
        ("65535", 65535),
        ("0x001A", 0x1A),
        ("0X1a", 0x1A),
        ("0xFFFF", 0xFFFF),
        (" 00:1A ", 0x1A),
    ],
)
def test_parse_ldev_accepts(text: str, expected: int) -> None:
    assert parse_ldev(text) == expected


@pytest.mark.parametrize(
    "text", ["100:00", "00:100", "-1", "65536", "0x10000", "zz", "", " ", "0x", "1A", "00-1A", ":"]
)
def test_parse_ldev_rejects_with_message_naming_input(text: str) -> None:
    with pytest.raises(FormatError) as info:
        parse_ldev(text)
    assert repr(text) in str(info.value)
    assert "00:1A" in str(info.value)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=0xFFFF))
def test_ldev_round_trips(ldev: int) -> None:
    name = format_ldev(ldev)
    assert len(name) == 5 and name[2] == ":"
    assert name == name.upper()
    assert parse_ldev(name) == ldev
    assert parse_ldev(name.lower()) == ldev
    assert parse_ldev(str(ldev)) == ldev
    assert parse_ldev(hex(ldev)) == ldev


def test_ldev_round_trips_exhaustively() -> None:
    names = [format_ldev(ldev) for ldev in range(0x10000)]
    assert [parse_ldev(name) for name in names] == list(range(0x10000))
    assert len(set(names)) == 0x10000


def test_format_ldev_example() -> None:
    assert format_ldev(26) == "00:1A"
    assert format_ldev(0x1AFF) == "1A:FF"


@settings(max_examples=300)
@given(st.text(max_size=12))
def test_parse_functions_raise_only_format_error(text: str) -> None:
    for parse in (parse_size, parse_ldev):
        try:
            value = parse(text)
        except FormatError:
            continue
        assert isinstance(value, int) and value >= 0
