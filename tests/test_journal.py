"""blockemu.journal and formats.journal_record: order, redo after crashes, torn tails."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockemu.journal import Journal, Record
from formats import FormatError
from formats.journal_record import (
    HEADER_BLOCK,
    JOURNAL_HEADER,
    JOURNAL_HEADER_SIZE,
    MAGIC,
    RECORD_HEADER_SIZE,
    JournalFileHeader,
    JournalHeader,
    JournalHeaderBlock,
    RecordHeader,
    decode_journal_header,
    decode_record,
    decode_record_header,
    encode_journal_header,
    encode_record_header,
)

REPO = Path(__file__).resolve().parent.parent
LDEV = 0x0102


def data_for(seq: int, size: int) -> bytes:
    """Distinct, recognisable data for the write that gets *seq*."""
    return (seq.to_bytes(4, "big") * (size // 4 + 1))[:size]


def fill(journal: Journal, sizes: list[int]) -> list[int]:
    return [journal.append(i * 512, data_for(journal.last_seq + 1, n)) for i, n in enumerate(sizes)]


def record_positions(path: Path) -> list[int]:
    """File offsets of the records, found by walking the file from the record area."""
    raw = path.read_bytes()
    positions, pos = [], HEADER_BLOCK
    while pos < len(raw):
        positions.append(pos)
        pos += RECORD_HEADER_SIZE + decode_record_header(raw[pos : pos + RECORD_HEADER_SIZE]).length
    return positions


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    return tmp_path / "01-02.jrnl"


# -- the format -------------------------------------------------------------------------


def test_struct_follows_the_construct_declarations() -> None:
    block = encode_journal_header(JournalHeader(ldev=7, applied_seq=1 << 40, base_offset=8192))
    assert len(block) == HEADER_BLOCK
    parsed = JournalHeaderBlock.parse(block)
    assert (parsed.ldev, parsed.applied_seq, parsed.base_offset) == (7, 1 << 40, 8192)
    assert JournalFileHeader.sizeof() == JOURNAL_HEADER.size == JOURNAL_HEADER_SIZE

    header = encode_record_header(5, 1 << 33, b"xyz", 123456789)
    parsed = RecordHeader.parse(header)
    assert (parsed.seq, parsed.offset, parsed.length, parsed.timestamp) == (
        5,
        1 << 33,
        3,
        123456789,
    )
    info, data = decode_record(header + b"xyz" + b"trailing bytes are ignored")
    assert (info.seq, info.offset, info.length, info.timestamp, data) == (
        5,
        1 << 33,
        3,
        123456789,
        b"xyz",
    )


def test_record_crc_covers_header_fields_and_data() -> None:
    raw = encode_record_header(1, 0, b"abcd", 0) + b"abcd"
    for i in range(2, len(raw)):  # every byte but the magic
        bad = bytearray(raw)
        bad[i] ^= 0x01
        with pytest.raises(FormatError, match=r"CRC mismatch|truncated"):
            decode_record(bytes(bad), name="j.jrnl: byte 4096")


def test_encoders_refuse_out_of_range_values() -> None:
    with pytest.raises(FormatError, match="cannot encode journal record"):
        encode_record_header(1, -1, b"", 0)
    with pytest.raises(FormatError, match="cannot encode journal header"):
        encode_journal_header(JournalHeader(ldev=1 << 16))
    with pytest.raises(FormatError, match="inside the header block"):
        encode_journal_header(JournalHeader(ldev=1, base_offset=100))


@given(st.binary(max_size=200))
def test_record_decoders_only_raise_format_error(data: bytes) -> None:
    for decode in (decode_record_header, decode_record):
        try:
            decode(data, name="fuzz")
        except FormatError as exc:
            assert str(exc).startswith("fuzz: ")


@given(st.binary(min_size=0, max_size=64))
def test_record_decoders_with_a_valid_magic_only_raise_format_error(tail: bytes) -> None:
    for decode in (decode_record_header, decode_record):
        try:
            decode(b"JR" + tail, name="fuzz")
        except FormatError as exc:
            assert str(exc).startswith("fuzz: ")


@given(st.binary(max_size=HEADER_BLOCK))
def test_header_decoder_only_raises_format_error(data: bytes) -> None:
    with pytest.raises(FormatError, match=r"^fuzz\.jrnl: "):
        decode_journal_header(data, name="fuzz.jrnl")


@given(st.binary(min_size=JOURNAL_HEADER_SIZE - 8, max_size=JOURNAL_HEADER_SIZE + 8))
def test_header_decoder_with_a_valid_magic_only_raises_format_error(tail: bytes) -> None:
    try:
        decode_journal_header(MAGIC + tail, name="fuzz.jrnl")
    except FormatError as exc:
        assert str(exc).startswith("fuzz.jrnl: ")


# -- order and the model -------------------------------------------------------------------


def test_append_unapplied_mark_applied(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        assert (j.last_seq, j.applied_seq, j.unapplied()) == (0, 0, [])
        assert [j.append(0, b"a"), j.append(512, b"bb"), j.append(4096, b"")] == [1, 2, 3]
        records = j.unapplied()
        assert [(r.seq, r.offset, r.data) for r in records] == [
            (1, 0, b"a"),
            (2, 512, b"bb"),
            (3, 4096, b""),
        ]
        assert [r.seq for r in j.unapplied(limit=2)] == [1, 2]
        j.mark_applied(2)
        assert [r.seq for r in j.unapplied()] == [3]
        assert (j.last_seq, j.applied_seq) == (3, 2)
        j.mark_applied(1)  # already applied: nothing happens
        assert j.applied_seq == 2
        with pytest.raises(ValueError, match="last record is 3"):
            j.mark_applied(4)
        j.mark_applied(3)
        assert j.unapplied() == []


def test_append_refuses_a_negative_offset_and_stays_usable(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        with pytest.raises(FormatError):
            j.append(-1, b"x")
        assert j.append(0, b"x") == 1
    with Journal.open(jpath, ldev=LDEV) as j:
        assert [r.seq for r in j.unapplied()] == [1]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 1 << 40), st.binary(max_size=5000)),
        st.tuples(st.just("mark"), st.floats(0, 1), st.none()),
        st.tuples(st.just("reopen"), st.none(), st.none()),
        st.tuples(st.just("compact"), st.none(), st.none()),
        st.tuples(st.just("reset"), st.none(), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, compact_at=st.sampled_from([0, 10_000, 1 << 26]))
def test_journal_matches_a_model(ops: list[tuple[str, object, object]], compact_at: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.jrnl"
        j = Journal.open(path, ldev=LDEV, compact_at=compact_at)
        model: list[tuple[int, int, bytes]] = []  # unapplied (seq, offset, data)
        last = applied = 0
        try:
            for op, a, b in ops:
                if op == "append":
                    assert isinstance(a, int) and isinstance(b, bytes)
                    last += 1
                    assert j.append(a, b) == last
                    model.append((last, a, b))
                elif op == "mark":
                    assert isinstance(a, float)
                    upto = int(a * len(model))
                    if upto:
                        applied = model[upto - 1][0]
                        del model[:upto]
                        j.mark_applied(applied)
                elif op == "reopen":
                    j.close()
                    j = Journal.open(path, ldev=LDEV, create=False, compact_at=compact_at)
                elif op == "compact":
                    j.compact()
                else:
                    j.reset()
                    model.clear()
                    applied = last
                assert (j.last_seq, j.applied_seq) == (last, applied)
                assert j.lag_records == len(model)
                assert j.lag_bytes == sum(len(d) for _, _, d in model)
            j.close()
            j = Journal.open(path, ldev=LDEV, create=False, compact_at=compact_at)
            assert [(r.seq, r.offset, r.data) for r in j.unapplied()] == model
            assert (j.last_seq, j.applied_seq) == (last, applied)
            assert j.append(0, b"next") == last + 1
        finally:
            j.close()


def test_reopen_keeps_unapplied_records_and_seq_numbering(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [100, 4096, 7])
        j.mark_applied(1)
        before = j.unapplied()
    with Journal.open(jpath, ldev=LDEV, create=False) as j:
        assert j.unapplied() == before
        assert (j.last_seq, j.applied_seq) == (3, 1)
        assert j.append(0, b"x") == 4
        j.mark_applied(3)
    with Journal.open(jpath, ldev=LDEV, create=False) as j:
        assert [r.seq for r in j.unapplied()] == [4]
        j.mark_applied(4)
    with Journal.open(jpath, ldev=LDEV, create=False) as j:
        assert (j.unapplied(), j.last_seq, j.applied_seq) == ([], 4, 4)
        assert j.append(0, b"y") == 5


def test_open_without_create_needs_the_file(jpath: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(jpath)):
        Journal.open(jpath, ldev=LDEV, create=False)
    assert not jpath.exists()


# -- crashes -----------------------------------------------------------------------------


def test_torn_tail_at_every_byte_drops_only_the_last_record(
    jpath: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [300, 20, 150])
        j.mark_applied(1)
    whole = jpath.read_bytes()
    last_start = record_positions(jpath)[-1]
    for cut in range(last_start + 1, len(whole)):
        jpath.write_bytes(whole[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING), Journal.open(jpath, ldev=LDEV) as j:
            assert [(r.seq, r.data) for r in j.unapplied()] == [(2, data_for(2, 20))]
            assert (j.last_seq, j.applied_seq) == (2, 1)
        assert jpath.stat().st_size == last_start
        assert f"dropped {cut - last_start} bytes" in caplog.text
        assert "never acknowledged" in caplog.text
    # The cut at the record boundary is a clean end: nothing to drop, nothing logged.
    jpath.write_bytes(whole[:last_start])
    caplog.clear()
    with caplog.at_level(logging.WARNING), Journal.open(jpath, ldev=LDEV) as j:
        assert j.last_seq == 2
    assert caplog.text == ""


def test_torn_record_is_replaced_by_the_next_append(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [100, 100])
    jpath.write_bytes(jpath.read_bytes()[:-10])
    with Journal.open(jpath, ldev=LDEV) as j:
        assert j.append(8, b"new") == 2
    with Journal.open(jpath, ldev=LDEV) as j:
        assert [(r.seq, r.offset, r.data) for r in j.unapplied()] == [
            (1, 0, data_for(1, 100)),
            (2, 8, b"new"),
        ]


def test_flipped_byte_in_last_record_drops_it(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [64, 64, 64])
    whole = jpath.read_bytes()
    last_start = record_positions(jpath)[-1]
    for pos in range(last_start, len(whole)):
        bad = bytearray(whole)
        bad[pos] ^= 0x40
        jpath.write_bytes(bad)
        with Journal.open(jpath, ldev=LDEV) as j:
            assert [r.seq for r in j.unapplied()] == [1, 2]
            assert [r.data for r in j.unapplied()] == [data_for(1, 64), data_for(2, 64)]
        assert jpath.stat().st_size == last_start


def test_a_bad_record_ends_the_journal_even_in_the_middle(
    jpath: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [64, 64, 64])
    middle = record_positions(jpath)[1]
    bad = bytearray(jpath.read_bytes())
    bad[middle + RECORD_HEADER_SIZE] ^= 1
    jpath.write_bytes(bad)
    with caplog.at_level(logging.WARNING), Journal.open(jpath, ldev=LDEV) as j:
        assert [r.seq for r in j.unapplied()] == [1]
    assert "CRC mismatch" in caplog.text


def test_non_consecutive_seq_ends_the_journal(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [10, 10])
    # A well-formed record whose seq skips one.
    with open(jpath, "ab") as f:
        f.write(encode_record_header(4, 0, b"gap", 0) + b"gap")
    with Journal.open(jpath, ldev=LDEV) as j:
        assert j.last_seq == 2
        assert j.append(0, b"z") == 3


def test_crash_between_compaction_header_and_truncate(jpath: Path) -> None:
    """The header says all is applied and records start at the front; they are still there."""
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [100, 100, 100])
    with open(jpath, "r+b") as f:
        f.write(encode_journal_header(JournalHeader(ldev=LDEV, applied_seq=3)))
    with Journal.open(jpath, ldev=LDEV) as j:
        assert (j.unapplied(), j.last_seq, j.applied_seq) == ([], 3, 3)
        assert j.append(0, b"x") == 4
        assert [r.seq for r in j.unapplied()] == [4]
    with Journal.open(jpath, ldev=LDEV) as j:
        assert [r.seq for r in j.unapplied()] == [4]


def test_missing_records_after_base_offset_end_the_journal(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [10, 10, 10])
    with open(jpath, "r+b") as f:  # header: 1 applied, but the first record there is 3
        f.write(
            encode_journal_header(
                JournalHeader(ldev=LDEV, applied_seq=1, base_offset=record_positions(jpath)[2])
            )
        )
    with Journal.open(jpath, ldev=LDEV) as j:
        assert (j.last_seq, j.unapplied()) == (1, [])


def test_base_offset_past_the_end_of_file(jpath: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [10])
        j.mark_applied(1)
    with open(jpath, "r+b") as f:
        f.write(encode_journal_header(JournalHeader(ldev=LDEV, applied_seq=1, base_offset=1 << 20)))
    with caplog.at_level(logging.WARNING), Journal.open(jpath, ldev=LDEV) as j:
        assert j.append(0, b"a") == 2
    assert "power loss" in caplog.text
    with Journal.open(jpath, ldev=LDEV) as j:
        assert [r.seq for r in j.unapplied()] == [2]


CHILD = textwrap.dedent(
    """
    import sys
    from blockemu.journal import Journal

    j = Journal.open(sys.argv[1], ldev=int(sys.argv[2]))
    n = int(sys.argv[3])
    i = 0
    while n < 0 or i < n:
        size = 512 * (1 + i % 9)
        seq = j.append(i * 512, (i % 251).to_bytes(1, "big") * size)
        print(seq, flush=True)
        i += 1
    print("done", flush=True)
    sys.stdin.read()  # wait to be killed
    """
)


def run_child(jpath: Path, count: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(jpath), str(LDEV), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def check_child_records(jpath: Path, acknowledged: list[int]) -> None:
    with Journal.open(jpath, ldev=LDEV, create=False) as j:
        records = j.unapplied()
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, len(seqs) + 1))
    assert set(acknowledged) <= set(seqs)
    for r in records:
        i = r.seq - 1
        assert (r.offset, r.data) == (i * 512, (i % 251).to_bytes(1, "big") * 512 * (1 + i % 9))


def test_sigkill_after_appends_loses_nothing(jpath: Path) -> None:
    proc = run_child(jpath, 300)
    assert proc.stdout is not None
    seqs = []
    try:
        for line in proc.stdout:
            if line.strip() == "done":
                break
            seqs.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert seqs == list(range(1, 301))
    check_child_records(jpath, seqs)


def test_sigkill_in_the_middle_of_appending(jpath: Path) -> None:
    proc = run_child(jpath, -1)
    assert proc.stdout is not None
    seqs = []
    try:
        for line in proc.stdout:
            seqs.append(int(line))
            if len(seqs) == 2000:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    check_child_records(jpath, seqs)


# -- bad headers ---------------------------------------------------------------------------


def corrupt_header(path: Path, offset: int, value: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)


@pytest.mark.parametrize(
    ("offset", "value", "problem"),
    [
        (0, b"NOTJRNL!", "bad magic"),
        (8, b"\x00\x02", "CRC mismatch"),  # version 2 under the old CRC
        (12, b"\xff", "CRC mismatch"),
        (0, bytes(JOURNAL_HEADER_SIZE), "empty"),
    ],
)
def test_bad_header_names_the_file(jpath: Path, offset: int, value: bytes, problem: str) -> None:
    Journal.open(jpath, ldev=LDEV).close()
    corrupt_header(jpath, offset, value)
    with pytest.raises(FormatError, match=problem) as info:
        Journal.open(jpath, ldev=LDEV)
    assert str(jpath) in str(info.value)


def test_unsupported_version_names_the_file(jpath: Path) -> None:
    Journal.open(jpath, ldev=LDEV).close()
    block = bytearray(encode_journal_header(JournalHeader(ldev=LDEV)))
    block[8:10] = (2).to_bytes(2, "big")
    block[28:32] = zlib.crc32(block[:28]).to_bytes(4, "big")
    jpath.write_bytes(bytes(block))
    with pytest.raises(FormatError, match="version 2 is not supported") as info:
        Journal.open(jpath, ldev=LDEV)
    assert str(jpath) in str(info.value)


def test_short_file_and_wrong_ldev_name_the_file(jpath: Path) -> None:
    jpath.write_bytes(b"BEMUJRNL")
    with pytest.raises(FormatError, match="shorter than its 4096-byte header") as info:
        Journal.open(jpath, ldev=LDEV)
    assert str(jpath) in str(info.value)
    jpath.unlink()
    Journal.open(jpath, ldev=LDEV).close()
    with pytest.raises(FormatError, match="belongs to LDEV 01:02, not 00:05") as info:
        Journal.open(jpath, ldev=5)
    assert str(jpath) in str(info.value)


# -- lag, reset, compaction ------------------------------------------------------------------


def test_lag(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        assert (j.lag_records, j.lag_bytes, j.lag_seconds()) == (0, 0, 0.0)
        fill(j, [100, 200, 300])
        assert (j.lag_records, j.lag_bytes) == (3, 600)
        first = j.unapplied(1)[0].timestamp
        assert j.lag_seconds(first + 2_500_000_000) == 2.5
        assert j.lag_seconds(first - 1) == 0.0  # clock stepped back: no negative lag
        assert 0.0 <= j.lag_seconds() < 60
        j.mark_applied(1)
        assert (j.lag_records, j.lag_bytes) == (2, 500)
        second = j.unapplied(1)[0].timestamp
        assert j.lag_seconds(second + 1_000_000_000) == 1.0
        j.mark_applied(3)
        assert (j.lag_records, j.lag_bytes, j.lag_seconds()) == (0, 0, 0.0)
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [7])
    with Journal.open(jpath, ldev=LDEV) as j:  # the timestamp survives a reopen
        assert (j.lag_records, j.lag_bytes) == (1, 7)
        assert j.lag_seconds(j.unapplied()[0].timestamp + 10**9) == 1.0


def test_reset_drops_everything_and_keeps_seq_monotonic(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [4096] * 5)
        j.mark_applied(2)
        j.reset()
        assert (j.unapplied(), j.last_seq, j.applied_seq, j.lag_records, j.lag_bytes) == (
            [],
            5,
            5,
            0,
            0,
        )
        assert jpath.stat().st_size == HEADER_BLOCK
        assert j.append(0, b"a") == 6
        j.reset()
    with Journal.open(jpath, ldev=LDEV) as j:
        assert (j.unapplied(), j.last_seq, j.applied_seq) == ([], 6, 6)
        assert j.append(0, b"b") == 7


def test_compact_shrinks_a_fully_applied_journal(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [4096] * 10)
        j.mark_applied(9)
        j.compact()  # one record unapplied: nothing happens
        grown = jpath.stat().st_size
        assert grown > 10 * 4096
        j.mark_applied(10)
        assert jpath.stat().st_size == grown  # below compact_at: kept
        j.compact()
        assert jpath.stat().st_size == j.file_size == HEADER_BLOCK
        assert j.append(0, b"a") == 11
    with Journal.open(jpath, ldev=LDEV) as j:
        assert [(r.seq, r.data) for r in j.unapplied()] == [(11, b"a")]


def test_mark_applied_compacts_past_the_threshold(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV, compact_at=16 << 10) as j:
        fill(j, [4096] * 3)
        j.mark_applied(3)  # about 12 KiB of records: below the threshold
        assert jpath.stat().st_size > HEADER_BLOCK
        fill(j, [4096] * 2)
        j.mark_applied(4)  # one left: no compaction
        assert jpath.stat().st_size > 5 * 4096
        j.mark_applied(5)
        assert jpath.stat().st_size == HEADER_BLOCK
        assert j.append(0, b"x") == 6
    with Journal.open(jpath, ldev=LDEV) as j:
        assert [r.seq for r in j.unapplied()] == [6]


def test_record_type() -> None:
    r = Record(seq=1, offset=2, data=b"d", timestamp=3)
    with pytest.raises(AttributeError):
        r.seq = 2  # type: ignore[misc]


# -- records kept in memory -------------------------------------------------------------------


def as_tuples(records: list[Record]) -> list[tuple[int, int, bytes, int]]:
    return [(r.seq, r.offset, r.data, r.timestamp) for r in records]


def test_new_records_come_from_memory_and_reopened_ones_from_the_file(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [100, 200, 300])
        assert j.cached_records == 3
        in_memory = j.unapplied()
        os.truncate(jpath, HEADER_BLOCK)  # the file is not read for them
        assert j.unapplied() == in_memory
    with Journal.open(jpath, ldev=LDEV) as j:
        assert j.unapplied() == []
    with Journal.open(jpath, ldev=LDEV) as j:
        fill(j, [100, 200, 300])
        j.mark_applied(1)
        assert j.cached_records == 2
        before = j.unapplied()
    with Journal.open(jpath, ldev=LDEV) as j:
        assert j.cached_records == 0  # after a restart: all from the file, CRCs checked
        assert as_tuples(j.unapplied()) == as_tuples(before)
        fill(j, [50, 60])  # new ones in memory, behind the file's
        assert j.cached_records == 2
        records = j.unapplied()
        assert [r.seq for r in records] == [2, 3, 4, 5]
        assert as_tuples(records[:2]) == as_tuples(before)
        assert [r.data for r in records[2:]] == [data_for(4, 50), data_for(5, 60)]
        for limit in range(6):  # limits on either side of the file/memory boundary
            assert j.unapplied(limit) == records[:limit]
        j.mark_applied(3)  # every record from the file applied
        assert j.unapplied() == records[2:] and j.cached_records == 2
        j.mark_applied(5)
        assert (j.unapplied(), j.cached_records) == ([], 0)
        with pytest.raises(ValueError, match="negative"):
            j.unapplied(-1)


def test_memory_is_capped_and_the_oldest_are_read_back(jpath: Path) -> None:
    with Journal.open(jpath, ldev=LDEV, cache_bytes=1000) as j:
        fill(j, [300] * 5)
        assert j.cached_records == 3  # 900 bytes fit, the two oldest went
        assert [r.seq for r in j.unapplied()] == [1, 2, 3, 4, 5]
        assert [r.data for r in j.unapplied()] == [data_for(s, 300) for s in range(1, 6)]
        fill(j, [2000])  # bigger than the cap: kept in the file only
        assert j.cached_records == 0
        assert [r.seq for r in j.unapplied(limit=7)] == [1, 2, 3, 4, 5, 6]
        j.mark_applied(6)
        fill(j, [10])
        assert (j.cached_records, [r.seq for r in j.unapplied()]) == (1, [7])
        j.reset()
        assert (j.cached_records, j.unapplied()) == (0, [])
    with Journal.open(jpath, ldev=LDEV, cache_bytes=0) as j:
        fill(j, [10, 10])
        assert j.cached_records == 0
        assert [r.data for r in j.unapplied()] == [data_for(8, 10), data_for(9, 10)]


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    cache_bytes=st.sampled_from([0, 1, 6000, 20_000, 1 << 26]),
    limits=st.lists(st.integers(0, 45), min_size=1, max_size=3),
)
def test_unapplied_matches_a_model_after_every_step(
    ops: list[tuple[str, object, object]], cache_bytes: int, limits: list[int]
) -> None:
    """Whichever records are in memory, unapplied() gives the model's, at every step."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j.jrnl"
        j = Journal.open(path, ldev=LDEV, compact_at=10_000, cache_bytes=cache_bytes)
        model: list[tuple[int, int, bytes]] = []
        try:
            for op, a, b in ops:
                if op == "append":
                    assert isinstance(a, int) and isinstance(b, bytes)
                    model.append((j.append(a, b), a, b))
                elif op == "mark":
                    assert isinstance(a, float)
                    upto = int(a * len(model))
                    if upto:
                        j.mark_applied(model[upto - 1][0])
                        del model[:upto]
                elif op == "reopen":
                    j.close()
                    j = Journal.open(path, ldev=LDEV, compact_at=10_000, cache_bytes=cache_bytes)
                elif op == "compact":
                    j.compact()
                else:
                    j.reset()
                    model.clear()
                assert 0 <= j.cached_records <= j.lag_records == len(model)
                assert [(r.seq, r.offset, r.data) for r in j.unapplied()] == model
                for limit in limits:
                    got = [(r.seq, r.offset, r.data) for r in j.unapplied(limit)]
                    assert got == model[:limit]
        finally:
            j.close()
