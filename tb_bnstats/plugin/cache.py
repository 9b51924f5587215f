"""What the plugin keeps between requests: each experiment's tag index (a
short while) and the series read from the data provider (while their tags'
``max_step`` is unchanged), both bounded."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    from tb_bnstats.read.reader import TagIndex

# A run's tag index (list_scalars + list_tensors, a JSON parse per tag) is
# reused this long: a page load asks for it 3-4 times at once, and with 100
# layers (2,100 tags) listing costs about 100 ms. New data shows up at most
# this much later than TensorBoard reloads it.
INDEX_TTL_S = 2.0
# Series read from the provider are kept (per tag, while the tag's max_step is
# unchanged) up to this many points in all: the heat map, the overview and a
# layer's charts read the same tags again on every view change and reload.
SERIES_CACHE_POINTS = 4_000_000
# A series' key in that cache: (experiment, run as the data provider names it, tag, downsample).
SeriesKey = tuple[str, str, str, int]
# A diagnosis' key: (experiment, run as the data provider names it, run as shown: the findings carry it).
FindingsKey = tuple[str, str, str]


class IndexCache:
    """``experiment -> {run: TagIndex}`` for :data:`INDEX_TTL_S` seconds."""

    def __init__(self, ttl_s: float = INDEX_TTL_S) -> None:
        self._ttl = ttl_s
        self._entries: dict[str, tuple[float, dict[str, TagIndex]]] = {}
        self._lock = threading.Lock()

    def get(self, experiment_id: str, make: Callable[[], dict[str, TagIndex]]) -> dict[str, TagIndex]:
        """The cached index, or ``make()``'s (then cached)."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(experiment_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        indexes = make()
        with self._lock:
            self._entries[experiment_id] = (now, indexes)
        return indexes


class SeriesCache:
    """LRU of ``(experiment, run, tag, downsample) -> (version, value)``,
    bounded by the number of points held: a series ``(steps, values)``, or
    a layer log (:class:`tb_bnstats.read.logs.LayerLogData`) under its
    layer's key, of ``size`` points. An entry is used only while its
    ``version`` (a tag's ``max_step``, a layer log's tags' ``max_step``) is
    the current index's."""

    def __init__(self, budget_points: int = SERIES_CACHE_POINTS) -> None:
        self._budget = budget_points
        self._held = 0
        self._entries: collections.OrderedDict[SeriesKey, tuple[Any, Any, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: SeriesKey, version: Any) -> Any:
        """The value cached for ``key`` at ``version``, or None."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] != version:
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, key: SeriesKey, version: Any, value: Any, size: int) -> None:
        """Keeps ``value`` of ``size`` points (not one larger than the whole
        budget), evicting the least recently used."""
        if size > self._budget:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= old[2]
            self._entries[key] = (version, value, size)
            self._held += size
            while self._held > self._budget and self._entries:
                _, (_, _, held) = self._entries.popitem(last=False)
                self._held -= held


# Runs whose diagnosis is kept (each a few kB of findings).
FINDINGS_CACHE_RUNS = 256
# What a run's diagnosis depends on: ((tag, max_step), ...).
Signature = tuple[tuple[str, int], ...]


class FindingsCache:
    """LRU of ``(experiment, run) -> (signature, findings)``: a run is
    diagnosed once per new data (``signature``: its tags' ``max_step``), not
    once per request -- ``/findings``, ``/overview``'s badges and ``/runs``'
    severities share it."""

    def __init__(self, max_runs: int = FINDINGS_CACHE_RUNS) -> None:
        self._max = max_runs
        self._entries: collections.OrderedDict[FindingsKey, tuple[Signature, dict[str, Any]]] = \
            collections.OrderedDict()
        self._computing: dict[FindingsKey, threading.Lock] = {}  # key -> the lock its diagnosis is made under
        self._lock = threading.Lock()

    def peek(self, key: FindingsKey, signature: Signature) -> dict[str, Any] | None:
        """The findings cached for ``key`` at ``signature``, or None."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] != signature:
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def get(self, key: FindingsKey, signature: Signature,
            make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The cached findings, or ``make()``'s (then cached). Concurrent
        requests for one run (a page load asks ``/overview`` and
        ``/findings`` at once) wait for one diagnosis."""
        with self._lock:
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:
            hit = self.peek(key, signature)
            if hit is not None:
                return hit
            value = make()
            with self._lock:
                self._entries[key] = (signature, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    evicted, _ = self._entries.popitem(last=False)
                    self._computing.pop(evicted, None)
            return value
