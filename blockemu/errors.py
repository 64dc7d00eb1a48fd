"""Errors of the array, shared by the server (which sends them) and the client
(which raises them again), so a caller sees the same exception either way.

Each class carries the wire :class:`~formats.wire.Status` it travels as.
"""

from __future__ import annotations

from formats.wire import Status


class ArrayError(Exception):
    """Base of every error the array reports; ``str()`` is the full message."""

    status: Status = Status.INTERNAL


class StaleIdentity(ArrayError):
    """I/O named a PVID that is no longer the volume's: the host's buffer is stale."""

    status = Status.STALE_PVID


class NoSuchVolume(ArrayError):
    status = Status.NO_SUCH_LDEV


class OutOfRange(ArrayError):
    status = Status.OUT_OF_RANGE


class BadRequest(ArrayError):
    status = Status.BAD_REQUEST


class TooLarge(ArrayError):
    status = Status.TOO_LARGE


class VolumeExists(ArrayError):
    status = Status.EXISTS


class CorruptVolume(ArrayError):
    status = Status.CORRUPT_VOLUME


class VolumeIOError(ArrayError):
    status = Status.IO_ERROR


class Unsupported(ArrayError):
    status = Status.UNSUPPORTED


class VolumeHidden(ArrayError):
    """Host I/O to a paired S-VOL; it becomes usable after a split."""

    status = Status.HIDDEN


class ReservationConflict(ArrayError):
    """Another host holds the control right on the volume."""

    status = Status.RESERVED


class CommandRejected(ArrayError):
    """The pair's state does not accept the command (see blockemu.pairstate)."""

    status = Status.REJECTED


class AuthenticationFailed(ArrayError):
    """The host could not prove it knows its key, or the array could not prove it to the host."""

    status = Status.AUTH_FAILED


class AuthenticationRequired(ArrayError):
    """The array authenticates hosts, and this connection has not (yet)."""

    status = Status.AUTH_REQUIRED


class VolumeMasked(ArrayError):
    """The LDEV is outside the authenticated host's group (LUN masking)."""

    status = Status.MASKED


class AdminOnly(ArrayError):
    """Management (volumes, pairs) is refused to authenticated hosts: it is the administrator's."""

    status = Status.ADMIN_ONLY


class StoreLocked(Exception):
    """Another process owns the array root."""


_BY_STATUS = {
    cls.status: cls
    for cls in (
        ArrayError,
        StaleIdentity,
        NoSuchVolume,
        OutOfRange,
        BadRequest,
        TooLarge,
        VolumeExists,
        CorruptVolume,
        VolumeIOError,
        Unsupported,
        VolumeHidden,
        ReservationConflict,
        CommandRejected,
        AuthenticationFailed,
        AuthenticationRequired,
        VolumeMasked,
        AdminOnly,
    )
}


def error_for_status(status: int, message: str) -> ArrayError:
    """The exception a response with *status* stands for."""
    try:
        cls = _BY_STATUS[Status(status)]
    except ValueError:
        return ArrayError(f"array answered with unknown status {status}: {message}")
    return cls(message)
