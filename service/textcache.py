"""A bounded LRU cache of passages encoded on the fly, so a text sent again (the same retrieved
chunks re-ranked for a reformulated query, a retry) is not run through the models twice.

Keys are a 128-bit BLAKE2b of the text, keyed by the encoder's identity (its models' weights and
the index settings that shape a passage), so one cache never serves another model's postings.
Values are what the index would store: sorted token ids, float16 weights and, with a dense part,
the float32 vector. A thread-safe ``OrderedDict``; ``capacity`` 0 disables it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

__all__ = ["Encoded", "TextCache"]


class Encoded(NamedTuple):
    tokens: np.ndarray  # uint32, sorted
    weights: np.ndarray  # float16
    vector: np.ndarray | None  # float32 (dim,), before the index's codec


class TextCache:
    def __init__(self, capacity: int, identity: str) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self._salt = hashlib.blake2b(identity.encode("utf-8"), digest_size=16).digest()
        self._items: OrderedDict[bytes, Encoded] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def key(self, text: str) -> bytes:
        # surrogatepass: a JSON body may carry a lone surrogate ("\ud800"), still a valid str here
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, key=self._salt).digest()

    def get(self, key: bytes) -> Encoded | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: bytes, value: Encoded) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._items), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
