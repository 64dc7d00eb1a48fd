"""blockemu: a disk-array emulator (volume store, array server, client, CLI)."""

__version__ = "0.1.0"
