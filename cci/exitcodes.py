"""CCI's exit codes and error messages, as scripts and drivers test for them.

Scripts branch on the number (Cinder treats 0-127 as success and retries on
251/255 after restarting HORCM); people read the message, which CCI prints as
``<command>: [EX_NAME] <text>``. Both are copied here from CCI's generic
error-code table (research note replica-anchors.md section 1.4, and
published CCI output such as ``raidcom: [EX_ATTHOR] Can't be attached to HORC
manager``). blockemu adds ``CAUSE : ...`` lines under the message with the
reason in its own words, the way raidcom adds them for rejected orders.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class ExitCode:
    """One CCI error: its name, exit status and the text CCI prints."""

    name: str
    code: int
    text: str


_TABLE = (
    ExitCode("EX_CMDRJE", 221, "An order to the control/command device was rejected"),
    ExitCode("EX_INVVOL", 222, "Invalid volume status"),
    ExitCode("EX_ENLDEV", 227, "No such LDEV within the RAID"),
    ExitCode("EX_EWSTOT", 233, "Timeout waiting for specified status"),
    ExitCode("EX_EWSUSE", 234, "Pair suspended at WAIT state"),
    ExitCode("EX_EVOLCE", 235, "Pair Volume combination error"),
    ExitCode("EX_ENQVOL", 236, "Unmatched volume status within the group"),
    ExitCode("EX_CMDIOE", 237, "Control command I/O error"),
    ExitCode("EX_ENOGRP", 239, "No such group"),
    ExitCode("EX_INVMOD", 241, "Invalid RAID command mode"),
    ExitCode(
        "EX_ENORMT",
        242,
        "No remote host alive for remote commands, or Remote RAID Manager might be "
        "blocked (sleeping) on an existing I/O",
    ),
    ExitCode("EX_ENODEV", 246, "No such device"),
    ExitCode("EX_ENOENT", 247, "No such device or group"),
    ExitCode("EX_ATTHOR", 251, "Can't be attached to HORC manager"),
    ExitCode("EX_UNWOPT", 252, "Unknown option"),
    ExitCode("EX_INVARG", 253, "Invalid argument"),
    ExitCode("EX_REQARG", 254, "Required Arg list"),
    ExitCode("EX_COMERR", 255, "Can't be communicated with HORC manager"),
)

#: Every error by name, e.g. ``CODES["EX_ENOGRP"].code == 239``.
CODES: dict[str, ExitCode] = {e.name: e for e in _TABLE}

EX_CMDRJE = CODES["EX_CMDRJE"]
EX_INVVOL = CODES["EX_INVVOL"]
EX_ENLDEV = CODES["EX_ENLDEV"]
EX_EWSTOT = CODES["EX_EWSTOT"]
EX_EWSUSE = CODES["EX_EWSUSE"]
EX_EVOLCE = CODES["EX_EVOLCE"]
EX_ENQVOL = CODES["EX_ENQVOL"]
EX_CMDIOE = CODES["EX_CMDIOE"]
EX_ENOGRP = CODES["EX_ENOGRP"]
EX_INVMOD = CODES["EX_INVMOD"]
EX_ENORMT = CODES["EX_ENORMT"]
EX_ENODEV = CODES["EX_ENODEV"]
EX_ENOENT = CODES["EX_ENOENT"]
EX_ATTHOR = CODES["EX_ATTHOR"]
EX_UNWOPT = CODES["EX_UNWOPT"]
EX_INVARG = CODES["EX_INVARG"]
EX_REQARG = CODES["EX_REQARG"]
EX_COMERR = CODES["EX_COMERR"]


class CciError(Exception):
    """A command failing with a CCI exit code; ``causes`` are blockemu's explanation."""

    def __init__(self, error: ExitCode, *causes: str) -> None:
        self.error = error
        self.causes = tuple(c for c in causes if c)
        super().__init__(f"[{error.name}] {error.text}" + "".join(f"; {c}" for c in self.causes))

    def to_json(self) -> dict[str, object]:
        """The form the instance sends back to a command."""
        return {"ok": False, "error": self.error.name, "causes": list(self.causes)}

    @classmethod
    def from_json(cls, answer: dict[str, object]) -> CciError:
        name = str(answer.get("error", "EX_COMERR"))
        causes = answer.get("causes") or []
        assert isinstance(causes, list)
        return cls(CODES.get(name, EX_COMERR), *(str(c) for c in causes))


def message(command: str, exc: CciError) -> str:
    """CCI's one-line message, then one ``CAUSE :`` line per cause."""
    lines = [f"{command}: [{exc.error.name}] {exc.error.text}"]
    lines += [f"CAUSE : {cause}" for cause in exc.causes]
    return "\n".join(lines)


def report(command: str, exc: CciError, stream: TextIO | None = None) -> int:
    """Print *exc* CCI-style on stderr and return the exit status to use."""
    print(message(command, exc), file=stream or sys.stderr, flush=True)
    return exc.error.code
