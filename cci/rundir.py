"""Where an instance keeps its socket, pid file and log, and where its HORCM file is.

Real CCI reads ``/etc/horcmN.conf`` (or ``$HORCM_CONF``) and logs under
``/HORCM/log<N>``. blockemu keeps the same file names and lets a lab or a
test move them without root:

* ``BLOCKEMU_CCI_RUNDIR`` (default ``/run/blockemu-cci``): ``horcmN.sock``
  (the commands talk to the instance here), ``horcmN.pid``, ``horcmN.log``;
* ``BLOCKEMU_CCI_CONFDIR`` (default ``/etc``): where ``horcmN.conf`` is looked
  for when ``HORCM_CONF`` is not set.

Instance "" is CCI's default instance (no HORCMINST): ``/etc/horcm.conf``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUNDIR = "/run/blockemu-cci"
DEFAULT_CONFDIR = "/etc"


@dataclass(frozen=True)
class InstancePaths:
    """The files of one instance."""

    instance: str
    rundir: Path

    @property
    def stem(self) -> str:
        return f"horcm{self.instance}"

    @property
    def socket(self) -> Path:
        return self.rundir / f"{self.stem}.sock"

    @property
    def pidfile(self) -> Path:
        return self.rundir / f"{self.stem}.pid"

    @property
    def log(self) -> Path:
        return self.rundir / f"{self.stem}.log"

    @property
    def label(self) -> str:
        """How CCI names the instance in messages ("inst 0")."""
        return f"inst {self.instance}" if self.instance else "inst (default)"

    def pid(self) -> int | None:
        """The pid the instance recorded, or None."""
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None


def paths(instance: str, env: Mapping[str, str] | None = None) -> InstancePaths:
    env = os.environ if env is None else env
    return InstancePaths(instance, Path(env.get("BLOCKEMU_CCI_RUNDIR") or DEFAULT_RUNDIR))


def config_path(instance: str, env: Mapping[str, str] | None = None) -> Path:
    """``$HORCM_CONF``, else ``$BLOCKEMU_CCI_CONFDIR/horcmN.conf`` (``/etc`` by default)."""
    env = os.environ if env is None else env
    if env.get("HORCM_CONF"):
        return Path(env["HORCM_CONF"])
    return Path(env.get("BLOCKEMU_CCI_CONFDIR") or DEFAULT_CONFDIR) / f"horcm{instance}.conf"
