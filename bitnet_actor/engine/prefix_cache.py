"""Automatic prefix caching: the KV blocks of prompts, reused by later sequences of the same model.

A prompt is cut into full blocks of ``block_tokens`` tokens (16 by default; a partial last block is never cached).
Block ``i``'s key is blake2b-256 over (block ``i - 1``'s key, the block's token ids); block 0's parent is a root
key made from the salt and the KV cache's element type. A key therefore names the whole prefix up to the end of
its block, under one salt. The cache maps keys to copies of the blocks' keys and values, all layers. A new sequence
whose leading blocks are cached gets them copied into its own KV cache and starts its prefill after them (always
leaving at least one prompt token to compute: its logits give the first token); a sequence's full prompt blocks
are copied into the cache once its prefill has computed them.

Why 16 tokens a block (vLLM's default): a shared prefix loses on average half a block to the block boundary (8
tokens recomputed, a few ms of prefill), while the per-block overheads stay small: one hash, one dict entry, and
per layer and KV head one contiguous run of 16 x head_dim elements to copy (8 KiB at head_dim 128 in float32).

The salt says who may share blocks: the scheduler passes the organization's id, so that one tenant never finds
another's prompt in the cache, not even by timing; an operator may opt in to one platform-wide salt.

Eviction: least recently used, within a byte budget. A lookup or an insert touches its chain of blocks from the
last to the first, so a block is always more recently used than any of its descendants and the least recently
used block is a leaf: evicting it never strands a child (a block is only reachable through its parent).

Threads: :meth:`Model.step <bitnet_actor.engine.model.Model.step>` calls :meth:`PrefixCache.attach` and
:meth:`PrefixCache.store` under the model's lock. The index also has a lock of its own, so that
:meth:`PrefixCache.clear` and :meth:`PrefixCache.statistics` may come from another thread. A cached block is never
written again: copies out of one run outside that lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable

    import numpy.typing as npt

    from bitnet_actor.engine.config import ModelConfig
    from bitnet_actor.engine.opencl import OpenCLRunner
    from bitnet_actor.engine.sequence import Sequence

__all__ = ["BLOCK_TOKENS", "PrefixCache", "PrefixCacheStatistics", "block_keys"]

BLOCK_TOKENS = 16
"""Tokens per cached block (see the module docstring)."""

_PERSON = b"bitnet-prefix-v1"  # blake2b personalization (16 bytes): these keys hash nothing else


def block_keys(
    prompt: npt.NDArray[np.int64], salt: bytes, kind: str, *, block_tokens: int = BLOCK_TOKENS
) -> list[bytes]:
    """The keys of a prompt's full blocks.

    Args:
        prompt: the token ids.
        salt: who may share the blocks (an organization's id, or the platform's salt).
        kind: the KV cache's element type and device (blocks of different kinds never match).
        block_tokens: tokens per block.

    Returns:
        One 32-byte key per full block, in order: key ``i`` names tokens ``0 .. (i + 1) * block_tokens``.
    """
    root = hashlib.blake2b(digest_size=32, person=_PERSON)
    for part in (salt, kind.encode()):  # length-prefixed: no two (salt, kind) pairs give the same bytes
        root.update(len(part).to_bytes(4, "little"))
        root.update(part)
    parent = root.digest()
    ids = np.ascontiguousarray(prompt, dtype="<i8")
    keys = []
    for b in range(len(ids) // block_tokens):
        h = hashlib.blake2b(parent, digest_size=32, person=_PERSON)
        h.update(ids[b * block_tokens : (b + 1) * block_tokens].tobytes())
        parent = h.digest()
        keys.append(parent)
    return keys


@dataclass(frozen=True, slots=True)
class PrefixCacheStatistics:
    """A snapshot for metrics.

    Attributes:
        block_tokens: tokens per block.
        budget_bytes: the most bytes the blocks may take.
        bytes: bytes the blocks take now.
        blocks: blocks cached now.
        queried_tokens: prompt tokens of the sequences looked up (the hit rate's denominator).
        hit_tokens: prompt tokens found cached and not computed again.
        inserted_blocks: blocks copied into the cache.
        evicted_blocks: blocks evicted to stay within the budget (cleared ones are not counted).
    """

    block_tokens: int
    budget_bytes: int
    bytes: int
    blocks: int
    queried_tokens: int
    hit_tokens: int
    inserted_blocks: int
    evicted_blocks: int


class _Block:
    """One cached block: its keys and values (all layers), its parent and its cached children."""

    __slots__ = ("children", "k", "key", "nbytes", "parent", "v")

    def __init__(self, key: bytes, parent: _Block | None, k: Any, v: Any, nbytes: int) -> None:
        self.key = key
        self.parent = parent
        self.k = k  # (layers, Hkv, block_tokens, D) array on the CPU, a device buffer of that layout on OpenCL
        self.v = v
        self.nbytes = nbytes
        self.children: dict[bytes, _Block] = {}


class PrefixCache:
    """The cached KV blocks of one model. See the module docstring."""

    def __init__(
        self,
        config: ModelConfig,
        budget_bytes: int,
        *,
        block_tokens: int = BLOCK_TOKENS,
        runner: OpenCLRunner | None = None,
    ) -> None:
        """An empty cache.

        Args:
            config: the model's shape.
            budget_bytes: the most bytes its blocks may take.
            block_tokens: tokens per block (>= 1).
            runner: the model's OpenCL runner (blocks live on its device), or None for the CPU.

        Raises:
            ValueError: a negative budget or a block size below 1.
        """
        if budget_bytes < 0 or block_tokens < 1:
            raise ValueError("the prefix cache's budget must be >= 0 and its block size >= 1")
        self.block_tokens = block_tokens
        self.budget_bytes = budget_bytes
        self._config = config
        self._runner = runner
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._bytes = 0
        self._queried = self._hits = self._inserted = self._evicted = 0

    def block_bytes(self, itemsize: int) -> int:
        """Bytes of one block's keys and values for caches of ``itemsize``-byte elements."""
        cfg = self._config
        return 2 * cfg.num_layers * cfg.num_kv_heads * self.block_tokens * cfg.head_dim * itemsize

    @property
    def nbytes(self) -> int:
        """Bytes the cached blocks take."""
        return self._bytes

    def statistics(self) -> PrefixCacheStatistics:
        """Sizes and counters."""
        return PrefixCacheStatistics(
            self.block_tokens,
            self.budget_bytes,
            self._bytes,
            len(self._blocks),
            self._queried,
            self._hits,
            self._inserted,
            self._evicted,
        )

    def clear(self) -> int:
        """Drop every block (safe from any thread).

        Returns:
            The bytes freed.
        """
        with self._lock:
            freed = self._bytes
            self._blocks.clear()
            self._bytes = 0
        return freed

    # ------------------------------------------------------------------------------------------ steps

    def key(self, s: Sequence, salt: bytes) -> None:
        """Make a new sequence use the cache: its prompt's block keys under ``salt`` and its cache's kind."""
        kind = "float32 on the device" if self._runner is not None else str(s.k_cache.dtype)
        s._prefix_keys = block_keys(s.prompt, salt, kind, block_tokens=self.block_tokens)

    def attach(self, seqs: Iterable[Sequence]) -> None:
        """Give each new sequence (keyed, not yet looked up) the cached blocks of its prompt's longest cached
        prefix: copied into its KV cache, its ``pos`` and ``cached_tokens`` after them."""
        bt = self.block_tokens
        for s in seqs:
            keys = s._prefix_keys
            if keys is None or s._prefix_attached:
                continue
            s._prefix_attached = True
            usable = min(len(keys), (len(s.prompt) - 1) // bt)  # at least one prompt token left to compute
            chain: list[_Block] = []
            with self._lock:
                self._queried += len(s.prompt)
                for key in keys[:usable]:
                    block = self._blocks.get(key)
                    if block is None:
                        break
                    chain.append(block)
                self._touch(chain)
                self._hits += len(chain) * bt
            for i, block in enumerate(chain):  # outside the lock: a cached block is never written again
                self._put(s, i * bt, block)
            s.pos = s.cached_tokens = len(chain) * bt
            s._prefix_stored = len(chain)

    def store(self, seqs: Iterable[Sequence], positions: Iterable[int]) -> None:
        """Cache the full prompt blocks each sequence has computed (its KV cache holds ``position`` tokens).

        A block evicted since it was cached or found is copied in again from the sequence: the chain of every
        stored block stays whole. A block that does not fit, even after evicting every other chain, is not
        stored (nor are the blocks after it).
        """
        for s, pos in zip(seqs, positions, strict=True):
            keys = s._prefix_keys
            if keys is None or s.k_cache is None:
                continue
            ready = min(len(keys), pos // self.block_tokens)
            if ready <= s._prefix_stored:
                continue
            nbytes = self.block_bytes(_itemsize(s))
            with self._lock:
                missing = [b for b in range(ready) if keys[b] not in self._blocks]
            copies: dict[int, tuple[Any, Any]] = {}
            try:
                for b in missing:  # outside the lock
                    copies[b] = self._take(s, b * self.block_tokens)
            except MemoryError:  # the device is full: cache what was copied
                pass
            with self._lock:
                chain: list[_Block] = []
                for b in range(ready):
                    block = self._blocks.get(keys[b])
                    if block is None:
                        copy = copies.get(b)  # None: not copied, or cleared since the first look
                        if copy is None or not self._make_room(nbytes, chain):
                            break
                        block = _Block(keys[b], chain[-1] if chain else None, *copy, nbytes)
                        if block.parent is not None:
                            block.parent.children[block.key] = block
                        self._blocks[block.key] = block
                        self._bytes += nbytes
                        self._inserted += 1
                    chain.append(block)
                self._touch(chain)
            s._prefix_stored = ready

    # ------------------------------------------------------------------------------------------ the index

    def _touch(self, chain: list[_Block]) -> None:
        # last block first: each block ends up more recently used than its descendants (see the docstring)
        for block in reversed(chain):
            self._blocks.move_to_end(block.key)

    def _make_room(self, nbytes: int, keep: list[_Block]) -> bool:
        """Evict least recently used blocks until ``nbytes`` more fit, never one of ``keep`` (the chain being
        stored, the most recently used blocks); False when they cannot fit."""
        if nbytes > self.budget_bytes:
            return False
        kept = {block.key for block in keep}
        while self._bytes + nbytes > self.budget_bytes:
            victim = next(iter(self._blocks.values()))
            if victim.key in kept:
                return False
            self._evict(victim)
        return True

    def _evict(self, block: _Block) -> None:
        for child in list(block.children.values()):  # never the case (the victim is a leaf); never strand one
            self._evict(child)
        del self._blocks[block.key]
        if block.parent is not None:
            block.parent.children.pop(block.key, None)
        self._bytes -= block.nbytes
        self._evicted += 1

    # ------------------------------------------------------------------------------------------ copies

    def _take(self, s: Sequence, p0: int) -> tuple[Any, Any]:
        """A copy of the sequence's keys and values at positions ``p0 .. p0 + block_tokens``."""
        bt = self.block_tokens
        runner = self._runner
        if runner is None:
            # (layers, Hkv, bt, D) copies: never views that would keep the sequence's whole cache alive
            return s.k_cache[:, :, p0 : p0 + bt].copy(), s.v_cache[:, :, p0 : p0 + bt].copy()
        k, v = runner.new_kv_block(bt), runner.new_kv_block(bt)
        runner.copy_kv(s.k_cache, s.capacity, p0, k, bt, 0, bt)
        runner.copy_kv(s.v_cache, s.capacity, p0, v, bt, 0, bt)
        return k, v

    def _put(self, s: Sequence, p0: int, block: _Block) -> None:
        """Copy a block into the sequence's KV cache at positions ``p0 .. p0 + block_tokens``."""
        bt = self.block_tokens
        runner = self._runner
        if runner is None:
            s.k_cache[:, :, p0 : p0 + bt] = block.k
            s.v_cache[:, :, p0 : p0 + bt] = block.v
            return
        runner.copy_kv(block.k, bt, 0, s.k_cache, s.capacity, p0, bt)
        runner.copy_kv(block.v, bt, 0, s.v_cache, s.capacity, p0, bt)


def _itemsize(s: Sequence) -> int:
    k = s.k_cache
    return int(k.dtype.itemsize) if isinstance(k, np.ndarray) else 4  # device caches are float32
