"""Shared by the benchmark scripts in this directory (imported as ``benchlib``: each script's own directory is
first on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache Linux reports for cpu0 (0 when it reports none).

    Benchmarks that must stream from memory size their working sets from it: a 2-vCPU VM can sit on a host
    with hundreds of MiB of L3 (this project's machines have shown 32 MiB and 300 MiB).
    """
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            raw = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            size = int(raw[:-1]) * units[raw[-1]] if raw[-1] in units else int(raw)
        except (ValueError, IndexError):
            continue
        best = max(best, size)
    return best


def uncached_bytes(minimum: int) -> int:
    """A working-set size of at least ``minimum`` bytes and at least twice the last-level cache."""
    return max(minimum, 2 * last_level_cache_bytes())
