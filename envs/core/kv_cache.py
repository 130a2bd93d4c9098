"""Paged KV block manager: GPU blocks, a prefix cache, and host swap space.

Blocks that hold a request's private tokens are anonymous: only their count matters, so
allocating and freeing them is integer arithmetic. Blocks of the prefix cache are named by
their chained hash, carry a reference count, and, once no request references them, stay
cached in LRU order until a new allocation needs the space. Every `can_x` has its `x`;
`x` asserts what `can_x` promised (nano-vllm's block manager pairs them the same way).

The block manager is the only writer of KV state: its pools and, on each request,
`num_blocks`, `cached_hashes` and `swapped_blocks` (tests/test_instance_split.py checks that
no other module of the core assigns them). The instance's fast paths grow requests through
it in bulk: `allocate_blocks` (a count the caller computed), `reserve` / `claim_reserved`
(blocks taken when a group of decodes is scheduled, handed to the requests that needed
them when the iteration ends), `allocate_each` (a decode run's growth) and `catch_up`
(the blocks of the iteration in flight, when a decode run is advanced mid-iteration).
Prefill/decode disaggregation (envs/core/disagg.py) reserves a request's blocks on the
decode side before its KV transfer starts (`reserve_transfer`: taken from the pool, held
under the request's id, not yet on the request, which still holds its prefill-side blocks)
and hands them over when the transfer ends (`claim_transfer`). A live migration
(envs/core/migration.py) reserves the same way, grows the reservation stage by stage
(`grow_transfer`) and gives it back if it aborts (`cancel_transfer`).

Tiered KV cache (envs/core/kv_tiers.py, off unless `tiers` is given): a prefix-cache block
evicted from the GPU moves down into the `TierStore` instead of vanishing; `tier_run` finds
the blocks below that continue a request's GPU hits and `allocate_fresh(..., loaded=n)`
brings `n` of them back up (the caller decided load vs recompute and queued the load on
the host link, `link_transfer`, which swap traffic shares). Without tiers every path is
the one above, step for step.

`count_prefix_hits` is asked several times per admission (every `can_admit` of a waiting
request, then `_admit`); its answer is memoised per request and cleared by every write
that changes which hashes are cached or which cached ones are unreferenced (evictions,
claims of unreferenced blocks, publishing, frees and unpins reaching 0, drops, tier
loads). `check` recomputes every memoised answer.

Invariant (checked by `check`): uncached free blocks + evictable cached blocks + referenced
cached blocks + private blocks of live requests + reserved blocks + blocks reserved for
incoming transfers == capacity; with tiers, each tier within its capacity and every block
in exactly one place (the GPU's prefix cache or one tier).
"""

from __future__ import annotations

from collections import OrderedDict

from servegym.envs.core.kv_tiers import TierStore
from servegym.envs.core.request import Request


class KVCacheError(RuntimeError):
    """An allocation was attempted that `can_allocate` would have refused (a simulator bug)."""


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        *,
        enable_prefix_caching: bool = False,
        swap_blocks: int = 0,
        tiers: TierStore | None = None,
    ) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if swap_blocks < 0:
            raise ValueError(f"swap_blocks must be >= 0, got {swap_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.free_uncached = num_blocks
        self.refcount: dict[int, int] = {}  # every cached hash, referenced or evictable
        self.evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0, LRU first
        self.swap_capacity = swap_blocks
        self.swap_used = 0
        self.reserved = 0  # taken by `reserve`, not yet handed to requests
        self.incoming: dict[int, int] = {}  # rid -> blocks reserved for a KV transfer
        self.incoming_blocks = 0  # their sum
        self.prefix_queries = 0  # blocks looked up in the prefix cache
        self.prefix_hits = 0  # of which found
        if tiers is not None and not enable_prefix_caching:
            raise ValueError("kv_tiers hold prefix-cache blocks: enable_prefix_caching must "
                             "be true where kv_tiers are configured")
        self.tiers = tiers  # lower KV tiers (envs/core/kv_tiers.py), or None
        self.pins: dict[int, list[int]] = {}  # retention pins (envs/core/retention.py)
        # `count_prefix_hits` memo: its answer reads only which hashes are cached and which
        # of those are unreferenced, so it stays valid until a hash enters or leaves the
        # cache or a refcount reaches or leaves 0; every such write clears `_hit_memo`.
        self._hit_memo: dict[int, tuple[Request, int, tuple[int, int]]] = {}

    # ----------------------------------------------------------------- accounting
    @property
    def num_free(self) -> int:
        return self.free_uncached + len(self.evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take(self, count: int) -> None:
        if count <= self.free_uncached:
            self.free_uncached -= count
            return
        count -= self.free_uncached
        self.free_uncached = 0
        if count > len(self.evictable):
            raise KVCacheError(f"out of KV blocks: {count} more needed, none free")
        tiers = self.tiers
        popitem, refcount = self.evictable.popitem, self.refcount
        self._hit_memo.clear()
        if tiers is None:
            for _ in range(count):  # reuse the least recently used cached blocks
                del refcount[popitem(last=False)[0]]
            return
        evicted = []
        for _ in range(count):
            block_hash = popitem(last=False)[0]
            del refcount[block_hash]
            evicted.append(block_hash)
        tiers.demote_all(evicted)  # down a tier instead of gone, in eviction order

    # ----------------------------------------------------------------- grow a request
    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        return self.blocks_for(request.num_computed + num_new_tokens) - request.num_blocks

    def can_allocate(self, request: Request, num_new_tokens: int, reserve: int = 0) -> bool:
        """Room for KV slots of `num_new_tokens` more tokens, keeping `reserve` blocks free."""
        return self.blocks_needed(request, num_new_tokens) + reserve <= self.num_free

    def allocate(self, request: Request, num_new_tokens: int) -> None:
        need = self.blocks_needed(request, num_new_tokens)
        if need > 0:
            self._take(need)
            request.num_blocks += need

    # ----------------------------------------------------------------- prefix cache
    def count_prefix_hits(self, request: Request) -> tuple[int, int]:
        """(cached leading blocks usable by a fresh request, of which evictable now).

        At least one prompt token is always recomputed, as in vLLM, so a fully cached prompt
        still produces its first token from a forward pass.
        """
        hashes = request.prefix_hashes
        if not self.enable_prefix_caching or not hashes or request.num_computed:
            return 0, 0
        num_tokens = request.num_tokens
        memo = self._hit_memo.get(request.rid)
        if memo is not None and memo[0] is request and memo[1] == num_tokens:
            return memo[2]
        answer = self._scan_prefix_hits(hashes, num_tokens)
        self._hit_memo[request.rid] = (request, num_tokens, answer)
        return answer

    def _scan_prefix_hits(self, hashes: list[int], num_tokens: int) -> tuple[int, int]:
        """`count_prefix_hits` computed afresh: the leading cached run of `hashes`."""
        limit = min(len(hashes), (num_tokens - 1) // self.block_size)
        hits = evictable = 0
        refcount = self.refcount
        while hits < limit:
            refs = refcount.get(hashes[hits])
            if refs is None:
                break
            if refs == 0:
                evictable += 1
            hits += 1
        return hits, evictable

    def can_allocate_fresh(
        self, request: Request, hits: int, evictable_hits: int, num_new_tokens: int,
        reserve: int = 0,
    ) -> bool:
        """`can_allocate` for a request holding nothing yet whose first `hits` blocks are cached
        (`evictable_hits` of them unreferenced, so claiming them shrinks the free pool)."""
        need = self.blocks_for(hits * self.block_size + num_new_tokens) - hits
        return need + evictable_hits + reserve <= self.num_free

    def allocate_fresh(self, request: Request, hits: int, num_new_tokens: int,
                       loaded: int = 0) -> None:
        """Claim the first `hits` cached blocks, then allocate `num_new_tokens` after them.

        `loaded`: with tiers, the next `loaded` prompt blocks (found below by `tier_run`)
        are brought up onto the GPU first, published and referenced as cache hits."""
        hashes = request.prefix_hashes
        if loaded:
            self._load(request, hits, loaded)
            self.allocate(request, num_new_tokens)
            return
        if hits:
            refcount, evictable = self.refcount, self.evictable
            claimed = False  # an unreferenced block claimed: the hit memo is stale
            for block_hash in hashes[:hits]:
                refs = refcount[block_hash]
                if refs == 0:
                    del evictable[block_hash]
                    claimed = True
                refcount[block_hash] = refs + 1
            if claimed:
                self._hit_memo.clear()
            request.cached_hashes = list(hashes[:hits])
            request.num_blocks = hits
            request.num_computed = hits * self.block_size
            request.prefix_hit_tokens += hits * self.block_size
        if hashes and self.enable_prefix_caching:
            self.prefix_queries += min(len(hashes), request.prompt_len // self.block_size)
            self.prefix_hits += hits
        self.allocate(request, num_new_tokens)

    def _load(self, request: Request, hits: int, loaded: int) -> None:
        """`allocate_fresh` with `loaded` tier blocks after the `hits` GPU ones."""
        hashes, tiers = request.prefix_hashes, self.tiers
        refcount, evictable = self.refcount, self.evictable
        self._hit_memo.clear()  # `loaded` >= 1 hashes enter the cache
        for block_hash in hashes[:hits]:
            refs = refcount[block_hash]
            if refs == 0:
                del evictable[block_hash]
            refcount[block_hash] = refs + 1
        up = hashes[hits:hits + loaded]
        for block_hash in up:
            tiers.take(block_hash)  # out of its tier before any eviction can push it down
        self._take(loaded)
        for block_hash in up:
            refcount[block_hash] = 1
        request.cached_hashes = list(hashes[:hits + loaded])
        request.num_blocks = hits + loaded
        request.num_computed = (hits + loaded) * self.block_size
        request.prefix_hit_tokens += (hits + loaded) * self.block_size
        self.prefix_queries += min(len(hashes), request.prompt_len // self.block_size)
        self.prefix_hits += hits + loaded
        tiers.loaded_blocks += loaded
        tiers.loaded_bytes += loaded * tiers.block_bytes

    def tier_run(self, request: Request, hits: int) -> list[int]:
        """Tier levels of the prompt blocks right after the `hits` GPU-cached ones that a
        lower tier holds (empty without tiers)."""
        tiers = self.tiers
        hashes = request.prefix_hashes
        if tiers is None or not hashes or request.num_computed:
            return []
        limit = min(len(hashes), (request.num_tokens - 1) // self.block_size)
        return tiers.run(hashes, hits, limit)

    def link_transfer(self, now: float, seconds: float, waited: float) -> float:
        """Queue `seconds` of transfer on the host link at `now`; the time the iteration
        being built waits for its transfers: `waited` or this one's end, the later."""
        end = self.tiers.link.transfer(now, seconds) - now
        return end if end > waited else waited

    def take_blocks(self, count: int) -> None:
        """Take `count` anonymous blocks from the pool, owned by no request (tests that
        stage an occupancy by hand; the simulator grows requests through the methods
        that name them)."""
        self._take(count)

    def allocate_blocks(self, request: Request, count: int) -> None:
        """`allocate` for a caller that computed the `count` blocks needed itself and
        checked `count <= num_free` (the batch builder's hot loop)."""
        self._take(count)
        request.num_blocks += count

    # ----------------------------------------------------------------- bulk growth
    def can_reserve(self, count: int) -> bool:
        return count <= self.num_free

    def reserve(self, count: int) -> None:
        """Take `count` blocks for requests that will each need one by the end of the
        iteration being scheduled; `claim_reserved` hands them over."""
        if count > self.num_free:
            raise KVCacheError(f"cannot reserve {count} blocks, {self.num_free} free; "
                               "check can_reserve first")
        self._take(count)
        self.reserved += count

    def claim_reserved(self, requests: list[Request]) -> None:
        """Give one reserved block to each of `requests`: every reserved block is settled."""
        if len(requests) != self.reserved:
            raise KVCacheError(f"{len(requests)} requests claim {self.reserved} reserved blocks")
        for request in requests:
            request.num_blocks += 1
        self.reserved = 0

    def allocate_each(self, growth: list[tuple[Request, int]]) -> None:
        """`allocate_blocks` for many requests, `(request, count)` each, the total taken
        from the pool in one go (a decode run's growth, applied before the requests that
        finish at its end free theirs; the caller checked the total fits)."""
        total = 0
        for request, count in growth:
            request.num_blocks += count
            total += count
        self._take(total)

    def catch_up(self, requests: list[Request], ahead: int = 0) -> None:
        """Give each request the blocks that its `num_computed + ahead` tokens fill (never
        fewer than it holds), taken from the pool together (a decode run advanced to a
        moment mid-iteration: the iteration in flight holds its blocks)."""
        block_size = self.block_size
        total = 0
        for request in requests:
            tokens = request.num_computed + ahead
            held = request.num_blocks
            if tokens > held * block_size:
                need = -(-tokens // block_size) - held
                request.num_blocks = held + need
                total += need
        if total:
            self._take(total)

    # ----------------------------------------------------------------- KV transfers in
    def can_reserve_transfer(self, count: int, reserve: int = 0) -> bool:
        return count + reserve <= self.num_free

    def reserve_transfer(self, request: Request, count: int) -> None:
        """Take `count` blocks for `request`'s KV, arriving by a transfer from another
        instance (it still holds its blocks there); `claim_transfer` hands them over."""
        if request.rid in self.incoming:
            raise KVCacheError(f"request {request.rid} already has a transfer reserved here")
        if count > self.num_free:
            raise KVCacheError(f"cannot reserve {count} blocks for a transfer, "
                               f"{self.num_free} free; check can_reserve_transfer first")
        self._take(count)
        self.incoming[request.rid] = count
        self.incoming_blocks += count

    def claim_transfer(self, request: Request) -> None:
        """The transfer of `request` ended: its reserved blocks become its own (it must
        hold no blocks here or elsewhere: the sender freed them first)."""
        count = self.incoming.pop(request.rid, None)
        if count is None:
            raise KVCacheError(f"request {request.rid} has no transfer reserved here")
        if request.num_blocks or request.cached_hashes:
            raise KVCacheError(f"request {request.rid} still holds {request.num_blocks} "
                               "blocks elsewhere; the sender frees them before the claim")
        self.incoming_blocks -= count
        request.num_blocks = count

    def grow_transfer(self, request: Request, count: int) -> None:
        """Take `count` more blocks for `request`'s transfer reserved here (a live
        migration's next stage, envs/core/migration.py); check `can_reserve_transfer`."""
        if request.rid not in self.incoming:
            raise KVCacheError(f"request {request.rid} has no transfer reserved here to grow")
        if count < 0 or count > self.num_free:
            raise KVCacheError(f"cannot grow request {request.rid}'s transfer by {count} "
                               f"blocks, {self.num_free} free; check can_reserve_transfer")
        self._take(count)
        self.incoming[request.rid] += count
        self.incoming_blocks += count

    def cancel_transfer(self, request: Request) -> int:
        """Give back the blocks reserved for `request`'s transfer (an aborted migration);
        returns how many."""
        count = self.incoming.pop(request.rid, None)
        if count is None:
            raise KVCacheError(f"request {request.rid} has no transfer reserved here")
        self.incoming_blocks -= count
        self.free_uncached += count
        return count

    def commit_full_blocks(self, request: Request) -> None:
        """Publish the request's newly computed full prompt blocks to the prefix cache."""
        hashes = request.prefix_hashes
        if not self.enable_prefix_caching or not hashes:
            return
        cached = request.cached_hashes
        if cached is None:
            cached = request.cached_hashes = []
        full = min(len(hashes), request.num_computed // self.block_size)
        if full <= len(cached):
            return  # nothing new to publish
        refcount = self.refcount
        tiers = self.tiers
        self._hit_memo.clear()  # hashes may enter the cache
        if tiers is None:
            for index in range(len(cached), full):
                block_hash = hashes[index]
                if block_hash in refcount:
                    # Another request published it meanwhile; the chain must stay a prefix.
                    break
                refcount[block_hash] = 1
                cached.append(block_hash)
            return
        where, levels = tiers.where, tiers.levels
        for index in range(len(cached), full):
            block_hash = hashes[index]
            if block_hash in refcount:
                break  # as above
            refcount[block_hash] = 1
            cached.append(block_hash)
            # Recomputed here: a copy below is redundant (TierStore.discard, inlined).
            level = where.pop(block_hash, None)
            if level is not None:
                del levels[level][block_hash]
                tiers.discarded += 1

    # ----------------------------------------------------------------- release
    def free(self, request: Request) -> None:
        cached = request.cached_hashes
        num_cached = 0
        if cached:
            num_cached = len(cached)
            refcount, evictable = self.refcount, self.evictable
            released = False  # a block became unreferenced: the hit memo is stale
            # Tail blocks first, so the shared head of a prefix is evicted last.
            for block_hash in reversed(cached):
                refs = refcount[block_hash] - 1
                refcount[block_hash] = refs
                if refs == 0:
                    evictable[block_hash] = None
                    released = True
            if released:
                self._hit_memo.clear()
            request.cached_hashes = None
        self.free_uncached += request.num_blocks - num_cached
        request.num_blocks = 0

    # ----------------------------------------------------------------- retention
    def pin(self, pin: int, hashes: list[int]) -> int:
        """Hold the leading run of `hashes` still cached here under `pin` (one reference
        each, as a request would: they stop being evictable); the blocks held."""
        if pin in self.pins:
            raise KVCacheError(f"pin {pin} already holds blocks here")
        refcount, evictable = self.refcount, self.evictable
        held = []
        claimed = False
        for block_hash in hashes:
            refs = refcount.get(block_hash)
            if refs is None:
                break
            if refs == 0:
                del evictable[block_hash]
                claimed = True
            refcount[block_hash] = refs + 1
            held.append(block_hash)
        if claimed:
            self._hit_memo.clear()
        if held:
            self.pins[pin] = held
        return len(held)

    def unpin(self, pin: int) -> None:
        """Give up `pin`'s references (tail first, as `free` does)."""
        refcount, evictable = self.refcount, self.evictable
        released = False
        for block_hash in reversed(self.pins.pop(pin)):
            refs = refcount[block_hash] - 1
            refcount[block_hash] = refs
            if refs == 0:
                evictable[block_hash] = None
                released = True
        if released:
            self._hit_memo.clear()

    def drop_cached(self, hashes: list[int]) -> int:
        """No retention: the unreferenced ones of `hashes` leave the cache (freed, not
        demoted to a lower tier); the blocks dropped."""
        refcount, evictable = self.refcount, self.evictable
        dropped = 0
        for block_hash in hashes:
            if refcount.get(block_hash) == 0:
                del evictable[block_hash]
                del refcount[block_hash]
                dropped += 1
        if dropped:
            self._hit_memo.clear()
        self.free_uncached += dropped
        return dropped

    # ----------------------------------------------------------------- swap
    def can_swap_out(self, request: Request) -> bool:
        return self.swap_used + request.num_blocks <= self.swap_capacity

    def swap_out(self, request: Request) -> int:
        if not self.can_swap_out(request):
            raise KVCacheError("swap space full; check can_swap_out first")
        moved = request.num_blocks
        if self.tiers is not None:
            self.tiers.swap_bytes += moved * self.tiers.block_bytes
        self.swap_used += moved
        request.swapped_blocks = moved
        self.free(request)
        return moved

    def can_swap_in(self, request: Request, reserve: int = 0) -> bool:
        return request.swapped_blocks + reserve <= self.num_free

    def swap_in(self, request: Request) -> int:
        moved = request.swapped_blocks
        if self.tiers is not None:
            self.tiers.swap_bytes += moved * self.tiers.block_bytes
        self._take(moved)
        self.swap_used -= moved
        request.num_blocks = moved  # the shared prefix comes back as private copies
        request.swapped_blocks = 0
        return moved

    # ----------------------------------------------------------------- checks
    def check(self, live: list[Request]) -> None:
        """Raise if any block is leaked, double-counted, negative or over capacity
        (`reserved` blocks count as used: they belong to an iteration in flight; so do
        blocks reserved for incoming transfers, which must add up to `incoming_blocks`).

        Its passes over the whole cache run in C (map, count, isdisjoint): the simulator
        calls it once per instance at the end of every run, and after every event with
        debug checks; a negative reference count takes the plain comprehensions."""
        refcount = self.refcount
        counts = list(refcount.values())
        negative = bool(counts) and min(counts) < 0
        if negative:
            referenced = sum(1 for refs in counts if refs > 0)
        else:
            referenced = len(counts) - counts.count(0)
        private = self.reserved + self.incoming_blocks
        refs_seen: dict[int, int] = {}
        for request in live:
            cached = request.cached_hashes or []
            private += request.num_blocks - len(cached)
            for block_hash in cached:
                refs_seen[block_hash] = refs_seen.get(block_hash, 0) + 1
        for held in self.pins.values():  # retention pins reference blocks as requests do
            for block_hash in held:
                refs_seen[block_hash] = refs_seen.get(block_hash, 0) + 1
        problems = []
        if sum(self.incoming.values()) != self.incoming_blocks or \
                any(count < 0 for count in self.incoming.values()):
            problems.append(f"transfer reservations {self.incoming} do not add up to "
                            f"{self.incoming_blocks}")
        if self.free_uncached < 0 or self.swap_used < 0 or self.reserved < 0:
            problems.append(f"negative count: free={self.free_uncached} swap={self.swap_used} "
                            f"reserved={self.reserved}")
        if self.swap_used > self.swap_capacity:
            problems.append(f"swap {self.swap_used} above capacity {self.swap_capacity}")
        total = self.free_uncached + len(self.evictable) + referenced + private
        if total != self.num_blocks:
            problems.append(f"blocks do not add up: {total} accounted of {self.num_blocks}")
        if negative:
            agree = {h: r for h, r in refcount.items() if r > 0} == refs_seen
        else:
            # The positive counts equal `refs_seen` (all >= 1) iff there are as many and
            # each hash seen has its count.
            agree = referenced == len(refs_seen) and \
                list(map(refcount.get, refs_seen)) == list(refs_seen.values())
        if not agree:
            problems.append("prefix-cache reference counts disagree with the requests")
        evictable = self.evictable
        if list(map(refcount.get, evictable)).count(0) != len(evictable):
            problems.append("an evictable block is still referenced")
        swapped = sum(request.swapped_blocks for request in live)
        if swapped != self.swap_used:
            problems.append(f"swap space {self.swap_used} != blocks of swapped requests {swapped}")
        if self.tiers is not None:
            problems.extend(self.tiers.check(self.refcount))
        for request, num_tokens, answer in self._hit_memo.values():
            if request.num_tokens == num_tokens and \
                    self._scan_prefix_hits(request.prefix_hashes, num_tokens) != answer:
                problems.append(f"request {request.rid}'s memoised prefix hits {answer} are "
                                "stale (a cache write did not clear _hit_memo)")
                break
        if problems:
            raise KVCacheError("; ".join(problems))
