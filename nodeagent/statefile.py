"""The node's persisted state: replica flag, role, epoch (formats.state_file).

Written at every protocol step and every role change, atomically: temp file,
fsync, rename, fsync of the directory, so a crash leaves the old state or the
new one, never a torn file. A missing file is the initial state (flag 0, no
role, epoch 0); a damaged one is an error naming the file, never a guess.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

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
    blob = encode_state(state)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return state
