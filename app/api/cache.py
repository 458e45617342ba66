"""Serialized read responses, reused while the registry has not changed.

The key includes ``monitoring.registry_stamp`` read in the same transaction as the
query would run, so a cached body is exactly what the query would return now: no TTL,
no staleness, across any number of API processes and writers.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from pydantic import TypeAdapter


class ResponseCache:
    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._adapters: dict[Any, TypeAdapter] = {}

    def body(self, key: Hashable, build: Callable[[], Any], response_type: Any) -> bytes:
        """The JSON body for ``key``: cached, or ``build()`` validated against ``response_type``."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        adapter = self._adapters.get(response_type)
        if adapter is None:
            adapter = self._adapters.setdefault(response_type, TypeAdapter(response_type))
        data = adapter.dump_json(adapter.validate_python(build()))
        with self._lock:
            self._entries[key] = data
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return data
