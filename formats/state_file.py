"""A node's persisted replica state (DESIGN.md section 4).

nodeagent rewrites this small file at every protocol step (temp file, fsync,
rename) so that after a crash the survivor knows where the protocol stopped.
The CRC catches a file damaged some other way; a damaged file is reported,
never guessed at.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

import construct as c

from .errors import FormatError

MAGIC = b"BENS"
FORMAT_VERSION = 1


class ReplicaFlag(enum.IntEnum):
    """The patent's flags: 0, A1-A3 on the active, B1-B3 on a standby."""

    ZERO = 0
    A1 = 0xA1  # replica about to run / running on the array
    A2 = 0xA2  # replica done on the array; active's own view updated
    A3 = 0xA3  # standbys told "change complete"; waiting for their reflection
    B1 = 0xB1  # told the active is starting a replica
    B2 = 0xB2  # told the replica is complete; reflecting now
    B3 = 0xB3  # reflection done


class NodeRole(enum.IntEnum):
    NONE = 0
    ACTIVE = 1
    STANDBY = 2


class ReplicaOp(enum.IntEnum):
    """The replica operation a non-zero flag refers to."""

    NONE = 0
    SPLIT = 1
    QUICK_SPLIT = 2
    RESYNC = 3
    RESTORE = 4
    REFLECT = 5  # nothing to run: the array changed without the agent, reflect it (D16)


@dataclass(frozen=True)
class NodeState:
    """Flag, role and epoch of one node, plus the operation in flight.

    ``epoch`` grows on every role change so that peers can recognise a message
    from an old active. ``group`` names the replica group of ``op`` (empty when
    ``op`` is NONE). ``updated`` is Unix time in ns of the last write.
    """

    flag: ReplicaFlag = ReplicaFlag.ZERO
    role: NodeRole = NodeRole.NONE
    epoch: int = 0
    op: ReplicaOp = ReplicaOp.NONE
    group: str = ""
    updated: int = 0


_Body = c.Struct(
    "magic" / c.Bytes(4),
    "format_version" / c.Int8ub,
    "flag" / c.Int8ub,
    "role" / c.Int8ub,
    "op" / c.Int8ub,
    "epoch" / c.Int64ub,
    "updated" / c.Int64ub,
    "group" / c.PaddedString(64, "utf8"),
)

#: The whole file: body then CRC-32 of the body.
StateFile = c.Struct("body" / c.RawCopy(_Body), "crc" / c.Int32ub, c.Terminated)

SIZE = _Body.sizeof() + 4


def encode_state(state: NodeState) -> bytes:
    if len(state.group.encode("utf8")) > 64 or "\0" in state.group:
        raise FormatError(f"replica group name {state.group!r} is too long: at most 64 bytes")
    body = _Body.build(
        {
            "magic": MAGIC,
            "format_version": FORMAT_VERSION,
            "flag": state.flag,
            "role": state.role,
            "op": state.op,
            "epoch": state.epoch,
            "updated": state.updated,
            "group": state.group,
        }
    )
    return body + zlib.crc32(body).to_bytes(4, "big")


def decode_state(data: bytes, *, name: str = "state file") -> NodeState:
    """Parse a state file; *name* (usually its path) is used in error messages."""
    fix = "restore it from the peer with the cluster settled, or delete it to start at flag 0"
    if len(data) != SIZE:
        raise FormatError(f"{name}: {len(data)} bytes, expected {SIZE}; {fix}")
    if data[:4] != MAGIC:
        raise FormatError(f"{name}: bad magic {data[:4]!r}, not a nodeagent state file; {fix}")
    try:
        parsed = StateFile.parse(data)
    except (c.ConstructError, UnicodeDecodeError) as exc:
        raise FormatError(f"{name}: unreadable ({exc}); {fix}") from None
    if zlib.crc32(parsed.body.data) != parsed.crc:
        raise FormatError(f"{name}: CRC mismatch (corrupted); {fix}")
    v = parsed.body.value
    if v.format_version != FORMAT_VERSION:
        raise FormatError(
            f"{name}: format version {v.format_version}, this nodeagent reads {FORMAT_VERSION}"
        )
    if "\0" in v.group:  # encode_state refuses it: could never be rewritten
        raise FormatError(f"{name}: replica group name {v.group!r} contains a NUL; {fix}")
    try:
        return NodeState(
            flag=ReplicaFlag(v.flag),
            role=NodeRole(v.role),
            epoch=v.epoch,
            op=ReplicaOp(v.op),
            group=v.group,
            updated=v.updated,
        )
    except ValueError as exc:
        raise FormatError(f"{name}: bad field ({exc}); {fix}") from None
