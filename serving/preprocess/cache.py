"""In-memory LRU of preprocessed images, bounded by pixel bytes (one per preprocessor replica)."""

from __future__ import annotations

from collections import OrderedDict

from serving.messages import PreparedImage


class PreparedImageLRU:
    def __init__(self, max_bytes: int):
        self._max = max_bytes
        self._items: OrderedDict[str, PreparedImage] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> PreparedImage | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, image: PreparedImage) -> None:
        size = image.pixels.nbytes
        if size > self._max:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.pixels.nbytes
        self._items[key] = image
        self._bytes += size
        while self._bytes > self._max:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.pixels.nbytes
