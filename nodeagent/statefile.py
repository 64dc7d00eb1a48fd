"""The node's persisted state: replica flag, role, epoch (formats.state_file).

Written at every protocol step and every role change, atomically: temp file,
fsync, rename, fsync of the directory, so a crash leaves the old state or the
new one, never a torn file. A missing file is the initial state (flag 0, no
role, epoch 0); a damaged one is an error naming the file, never a guess.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from blockemu.fileio import atomic_write
from formats.state_file import NodeState, decode_state, encode_state


def load_state(path: Path) -> NodeState:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return NodeState()
    return decode_state(data, name=str(path))


def save_state(path: Path, state: NodeState) -> NodeState:
    """Persist *state* (stamped with the time) and return what was written."""
    state = replace(state, updated=time.time_ns())
    atomic_write(path, encode_state(state))
    return state
