"""What an instance tells a command about a group: each dev_name, both its volumes, its pair.

The instance resolves ``-g``/``-d`` against the two HORCM files and asks the
array; commands only format and decide exit codes. These small frozen
records are the whole interface between the two (sent as JSON over the
instance's socket), so display and exit-code logic can be tested without
any process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import states


@dataclass(frozen=True)
class Volume:
    """One side of a dev_name: the array serial and LDEV its HORCM file gives."""

    serial: int
    ldev: int


@dataclass(frozen=True)
class PairState:
    """The array's pair holding a dev_name's volumes (blockemu's own state names)."""

    pvol: int
    svol: int
    status: str
    copy_percent: int
    ctg: int | None = None


@dataclass(frozen=True)
class Dev:
    """One dev_name of a group as seen from the local instance."""

    group: str
    name: str
    mu: int
    local: Volume
    remote: Volume
    pair: PairState | None = None

    def side(self, remote: bool) -> Volume:
        return self.remote if remote else self.local

    def role(self, remote: bool = False) -> str:
        """P-VOL, S-VOL or SMPL for the local (or remote) volume."""
        if self.pair is None:
            return states.SIMPLEX
        return states.PVOL if self.side(remote).ldev == self.pair.pvol else states.SVOL

    def status(self, remote: bool = False) -> str:
        """The Status column of the local (or remote) volume: PAIR, SSUS, RCPY, ..."""
        if self.pair is None:
            return "SMPL"
        return states.shown(self.pair.status, self.pair.copy_percent, self.role(remote))

    def pvol_status(self) -> str:
        """What the P-VOL of this dev shows (SMPL when not paired); pairevtwait -s."""
        if self.pair is None:
            return "SMPL"
        return states.shown(self.pair.status, self.pair.copy_percent, states.PVOL)

    def svol_status(self) -> str:
        """What the S-VOL of this dev shows (SMPL when not paired); pairevtwait -ss."""
        if self.pair is None:
            return "SMPL"
        return states.shown(self.pair.status, self.pair.copy_percent, states.SVOL)

    def to_json(self) -> dict[str, Any]:
        pair = self.pair
        return {
            "group": self.group,
            "name": self.name,
            "mu": self.mu,
            "local": [self.local.serial, self.local.ldev],
            "remote": [self.remote.serial, self.remote.ldev],
            "pair": None
            if pair is None
            else {
                "pvol": pair.pvol,
                "svol": pair.svol,
                "status": pair.status,
                "copy_percent": pair.copy_percent,
                "ctg": pair.ctg,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dev:
        pair = data.get("pair")
        return cls(
            group=str(data["group"]),
            name=str(data["name"]),
            mu=int(data["mu"]),
            local=Volume(int(data["local"][0]), int(data["local"][1])),
            remote=Volume(int(data["remote"][0]), int(data["remote"][1])),
            pair=None
            if pair is None
            else PairState(
                int(pair["pvol"]),
                int(pair["svol"]),
                str(pair["status"]),
                int(pair["copy_percent"]),
                None if pair.get("ctg") is None else int(pair["ctg"]),
            ),
        )
