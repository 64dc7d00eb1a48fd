"""A volume of a FUSE view used the way a host uses a disk: loop device, ext4, mount.

Databases in the labs and tests run on ext4 on a loop device over a device
file of a host view (or the array view). Loop devices use
``--direct-io=on`` so the loop driver does not keep a second page cache in
front of the FUSE file, and a node's writes reach the array when the
filesystem says so. Everything set up is recorded so that it can be torn
down in reverse order, also when the FUSE daemon underneath has died (a
node crash): then ``umount -l`` and ``losetup -d`` still succeed and nothing
is left behind.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .labproc import is_mounted


class DiskError(RuntimeError):
    """A command of the loop/mkfs/mount chain failed; the message names it and its output."""


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise DiskError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class MountedDisk:
    """One device file attached as loop device and mounted at ``mountpoint``."""

    device_file: Path
    loop: str
    mountpoint: Path

    @classmethod
    def attach(
        cls,
        device_file: str | os.PathLike[str],
        mountpoint: str | os.PathLike[str],
        *,
        mkfs: bool = False,
        label: str = "",
    ) -> MountedDisk:
        """losetup --direct-io=on, optionally mkfs.ext4, mount; undone again on failure."""
        device_file, mountpoint = Path(device_file), Path(mountpoint)
        loop = _run("losetup", "--direct-io=on", "-f", "--show", str(device_file)).strip()
        try:
            if mkfs:
                _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                     *(["-L", label] if label else []), loop)  # fmt: skip
            mountpoint.mkdir(parents=True, exist_ok=True)
            _run("mount", "-t", "ext4", loop, str(mountpoint))
        except DiskError:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
            raise
        return cls(device_file, loop, mountpoint)

    def detach(self) -> None:
        """Unmount (lazily if the device underneath is gone) and free the loop device."""
        detach(self.loop, self.mountpoint)

    def to_dict(self) -> dict[str, str]:
        return {"device_file": str(self.device_file), "loop": self.loop,
                "mountpoint": str(self.mountpoint)}  # fmt: skip


def detach(loop: str, mountpoint: str | os.PathLike[str]) -> None:
    """Tear down one loop+mount pair, whatever state it is in (idempotent)."""
    umount = ["umount", str(mountpoint)]
    if is_mounted(mountpoint) and subprocess.run(umount, capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    subprocess.run(["losetup", "-d", loop], capture_output=True)
