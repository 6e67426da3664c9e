"""Hand back the memory pages of weights this process no longer reads, where that loses nothing.

transformers maps a safetensors checkpoint into memory on CPU: each fp32 weight is a view of the file's pages,
counted in the process's RSS once read. When the scorer reads layers through a reduced-precision twin, the
fp32 pages it read to build the twin are only generation's; dropping them from this process's page tables
(madvise MADV_DONTNEED) leaves them in the kernel's page cache, and a later read (a local answer) maps them
back in, as it would have read them the first time. That is safe only for pages that are still the file's
bytes: a private mapping that anything wrote to holds anonymous copies, which MADV_DONTNEED would throw away,
so a mapping with any anonymous page is left alone, as is everything off Linux.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from dataclasses import dataclass

import torch

MADV_DONTNEED = 4


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    file_backed: bool
    anonymous_kb: int


def _mappings() -> list[_Mapping]:
    """This process's mappings, from /proc/self/smaps: which hold a file's pages and how many were written."""
    found: list[_Mapping] = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                path = head[5] if len(head) > 5 else ""
                found.append(_Mapping(start, end, path.startswith("/") and head[4] != "0", 0))
            elif head[0] == "Anonymous:" and found:
                last = found[-1]
                found[-1] = _Mapping(last.start, last.end, last.file_backed, int(head[1]))
    return found


class Pages:
    """This process's mappings as they are now (read once: /proc/self/smaps is long in a torch process)."""

    def __init__(self) -> None:
        self.linux = sys.platform.startswith("linux")
        self.mappings = _mappings() if self.linux else []
        self.libc = ctypes.CDLL(None, use_errno=True) if self.linux else None

    def release(self, tensors: list[torch.Tensor]) -> int:
        """Drop the whole pages under `tensors` from this process where they are unwritten pages of a file
        mapping; returns the bytes dropped (0 where nothing qualified)."""
        page, released = mmap.PAGESIZE, 0
        for tensor in tensors:
            if self.libc is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
                continue
            address = tensor.data_ptr()
            end = address + tensor.numel() * tensor.element_size()
            owner = next((m for m in self.mappings if m.start <= address and end <= m.end), None)
            if owner is None or not owner.file_backed or owner.anonymous_kb:
                continue
            # Only whole pages: a page shared with a neighbouring tensor may still be read.
            first, last = -(-address // page) * page, end // page * page
            size = ctypes.c_size_t(last - first)
            if last > first and self.libc.madvise(ctypes.c_void_p(first), size, MADV_DONTNEED) == 0:
                released += last - first
        return released
