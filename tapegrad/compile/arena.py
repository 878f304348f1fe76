"""The CPU engine's block allocator: one arena per dtype, where a plan places each slot's buffer.

Best-fit reuse of freed blocks: the smallest free block that fits and is at most twice the need, and among
blocks of that size the last freed (still in cache).  Free blocks are kept per size with the sizes sorted, so a
tape of thousands of slots plans in linear time (a scan of one free list cost 0.6 s on the 6205-instruction
Lorenz-96 tape).
"""

from __future__ import annotations

import bisect


class BlockAllocator:
    """Offsets into per-dtype arenas; ``tops[dtype]`` is the arena length needed so far (elements)."""

    def __init__(self, align):
        self.align = align
        self.tops = {}
        self._free = {}  # dtype -> {block size: [offsets]}
        self._sizes = {}  # dtype -> sorted block sizes with free blocks

    def alloc(self, dt, n):
        """``(offset, block size)`` of a block for ``n`` elements of ``dt`` (at least one, rounded up to ``align``)."""
        n = -(-max(n, 1) // self.align) * self.align
        ks = self._sizes.get(dt)
        if ks:
            i = bisect.bisect_left(ks, n)
            if i < len(ks) and ks[i] <= 2 * n:
                m = ks[i]
                offs = self._free[dt][m]
                off = offs.pop()
                if not offs:
                    del self._free[dt][m]
                    ks.pop(i)
                return off, m
        off = self.tops.get(dt, 0)
        self.tops[dt] = off + n
        return off, n

    def release(self, dt, size, off):
        """Return the block at ``off`` (of ``size`` elements, as :meth:`alloc` gave it) for reuse."""
        offs = self._free.setdefault(dt, {}).get(size)
        if offs is None:
            self._free[dt][size] = offs = []
            bisect.insort(self._sizes.setdefault(dt, []), size)
        offs.append(off)
