"""Turn ``-g``/``-d`` into the dev_names of a group, using both instances' HORCM files.

A ShadowImage pair is defined by two files: the local instance lists its
LDEV of each dev_name, the partner instance (named in HORCM_INST) lists the
other one. Which of the two is the P-VOL is not in the files; ``paircreate
-vl``/``-vr`` decides it and the array remembers it. Resolution is pure and
reuses :func:`formats.horcm.match_pairs` on the two files cut down to the
group, so a mismatch is reported with file and line as the parser does.
"""

from __future__ import annotations

import dataclasses

from formats.horcm import HorcmConfig, HorcmError, InstEntry, match_pairs

from .exitcodes import EX_ENODEV, EX_ENOENT, EX_ENOGRP, EX_EVOLCE, CciError
from .model import Dev, Volume
from .options import Selector


def only_group(config: HorcmConfig, group: str) -> HorcmConfig:
    """*config* with nothing but *group*'s lines."""
    return dataclasses.replace(
        config,
        devs=tuple(e for e in config.devs if e.group == group),
        ldevs=tuple(e for e in config.ldevs if e.group == group),
        insts=tuple(e for e in config.insts if e.group == group),
        ldevgs=(),
    )


def find_group(config: HorcmConfig, selector: Selector) -> str:
    """The group a selector names in the local file: -g, or the group of -d Seq# LDEV#."""
    groups = config.groups()
    if selector.group is not None:
        if selector.group in groups:
            return selector.group
        if any(g.copy_group == selector.group for g in config.ldevgs):
            raise CciError(
                EX_ENOGRP,
                f"copy group {selector.group!r} is a HORCM_LDEVG group, "
                "defined inside the array by raidcom, which blockemu cannot see; "
                "list its volumes under HORCM_LDEV",
            )
        known = ", ".join(groups) or "none"
        raise CciError(
            EX_ENOGRP, f"group {selector.group!r} is not in {config.path} (groups there: {known})"
        )
    assert selector.volume is not None
    serial, ldev, mu = selector.volume
    for entry in config.ldevs:
        if entry.serial == serial and entry.ldev == ldev and (mu is None or (entry.mu or 0) == mu):
            return entry.group
    raise CciError(
        EX_ENOENT,
        f"no HORCM_LDEV line in {config.path} names Seq# {serial} "
        f"LDEV# {ldev}" + ("" if mu is None else f" MU# {mu}"),
    )


def partner(config: HorcmConfig, group: str) -> InstEntry:
    """Where the partner instance of *group* listens (its first HORCM_INST/INSTP line)."""
    for entry in config.insts:
        if entry.group == group:
            return entry
    raise CciError(
        EX_ENOGRP,
        f"{config.path} has no HORCM_INST line for group {group!r}: "
        f"add '{group} <host> <service>' naming the partner instance",
    )


def resolve(local: HorcmConfig, remote: HorcmConfig, group: str, selector: Selector) -> list[Dev]:
    """The dev_names of *group* that *selector* names, with both sides' volumes.

    EX_ENOGRP if the partner's file lacks the group, EX_EVOLCE if the two files
    disagree about it (names, MU#, serial), EX_ENODEV for an unknown -d.
    """
    if group not in remote.groups():
        raise CciError(
            EX_ENOGRP,
            f"group {group!r} is in {local.path} but not in the partner "
            f"instance's {remote.path}: define it there with the same dev_names",
        )
    try:
        pairs = match_pairs(only_group(local, group), only_group(remote, group))
    except HorcmError as exc:
        raise CciError(EX_EVOLCE, *exc.problems) from None
    devs = [
        Dev(group, p.name, p.mu, Volume(p.serial, p.pvol_ldev), Volume(p.serial, p.svol_ldev))
        for p in pairs
    ]
    if selector.dev is not None:
        devs = [d for d in devs if d.name == selector.dev]
        if not devs:
            names = ", ".join(p.name for p in pairs)
            raise CciError(
                EX_ENODEV, f"group {group!r} has no dev_name {selector.dev!r} (it has {names})"
            )
    elif selector.volume is not None:
        serial, ldev, _ = selector.volume
        devs = [d for d in devs if d.local.serial == serial and d.local.ldev == ldev]
        if not devs:
            raise CciError(EX_ENOENT, f"group {group!r} has no volume Seq# {serial} LDEV# {ldev}")
    return devs
