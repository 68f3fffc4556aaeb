"""One metrics page for the whole server: the workers' counts added to the supervisor's.

Strategy (docs/workers.md, "Metrics"): each process counts in its own
registry, as a single process does (metrics.py). The supervisor serves
`openmetrics`; for each scrape it asks every worker for its samples
(`families`), and `Merged` adds them to its own, sample by sample (same
metric name, same labels). Sums are what a whole-server view needs for
every counter, histogram and gauge kittiwake has (open connections,
queue length: only the supervisor has queues), and for the process's
CPU time, memory and open files. A few describe one process rather than
an amount (`KEEP_OWN`: when the process started, its file limit, the
Python version): those are the supervisor's.

Counters must never go down, or Prometheus takes the drop for a restart
of the whole server. A worker that exits (a crash, a reload retiring it)
takes its counts with it, so the supervisor keeps the last counts it had
from each worker, the final ones it sends as it stops when it can, and
adds them to `Retired` when the worker is gone. Counts made after a
crashed worker's last scrape are lost, as a single process's are when it
crashes; gauges of a gone worker are simply no longer there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

__all__ = ["KEEP_OWN", "Merged", "Retired", "families"]

#: Families that describe the supervisor process itself, not an amount.
KEEP_OWN = frozenset({"process_start_time_seconds", "process_max_fds", "python_info"})
#: Families whose samples only grow while a process lives.
_GROWING = frozenset({"counter", "histogram", "summary"})

Family = dict[str, Any]
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def families(registry: CollectorRegistry) -> list[Family]:
    """A registry's samples as JSON-ready data, for the supervisor."""
    out = []
    for metric in registry.collect():
        out.append(
            {
                "name": metric.name,
                "type": metric.type,
                "help": metric.documentation,
                "unit": metric.unit,
                "samples": [[s.name, dict(s.labels), s.value] for s in metric.samples],
            }
        )
    return out


def _key(sample: list[Any]) -> SampleKey:
    return str(sample[0]), tuple(sorted((str(k), str(v)) for k, v in dict(sample[1]).items()))


class Retired:
    """The growing counts of workers that are gone, kept so totals never drop."""

    def __init__(self) -> None:
        self._meta: dict[str, tuple[str, str, str]] = {}
        self._values: dict[str, dict[SampleKey, float]] = {}

    def add(self, gone: list[Family]) -> None:
        for family in gone:
            name = str(family.get("name", ""))
            kind = str(family.get("type", ""))
            if kind not in _GROWING or name in KEEP_OWN:
                continue
            self._meta.setdefault(
                name, (kind, str(family.get("help", "")), str(family.get("unit", "")))
            )
            values = self._values.setdefault(name, {})
            for sample in family.get("samples", []):
                key = _key(sample)
                values[key] = values.get(key, 0.0) + float(sample[2])

    def as_families(self) -> list[Family]:
        out = []
        for name, values in self._values.items():
            kind, text, unit = self._meta[name]
            samples = [[sname, dict(labels), value] for (sname, labels), value in values.items()]
            out.append({"name": name, "type": kind, "help": text, "unit": unit, "samples": samples})
        return out


class Merged:
    """The supervisor's registry plus the workers' samples, for `generate_latest`."""

    def __init__(self, own: CollectorRegistry, others: Iterable[list[Family]]) -> None:
        self._own = own
        self._others = list(others)

    def collect(self) -> list[Metric]:
        order: list[str] = []
        meta: dict[str, tuple[str, str, str]] = {}
        sums: dict[str, dict[SampleKey, float]] = {}
        for metric in self._own.collect():
            order.append(metric.name)
            meta[metric.name] = (metric.type, metric.documentation, metric.unit)
            values = sums.setdefault(metric.name, {})
            for s in metric.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                values[key] = values.get(key, 0.0) + s.value
        for group in self._others:
            for family in group:
                self._add(family, order, meta, sums)
        out = []
        for name in order:
            kind, text, unit = meta[name]
            metric = Metric(name, text, kind, unit)
            for (sname, labels), value in sums[name].items():
                metric.add_sample(sname, dict(labels), value)
            out.append(metric)
        return out

    @staticmethod
    def _add(
        family: Family,
        order: list[str],
        meta: dict[str, tuple[str, str, str]],
        sums: dict[str, dict[SampleKey, float]],
    ) -> None:
        name = str(family.get("name", ""))
        kind = str(family.get("type", ""))
        if not name or name in KEEP_OWN:
            return
        known = meta.get(name)
        if known is None:
            order.append(name)
            meta[name] = (kind, str(family.get("help", "")), str(family.get("unit", "")))
        elif known[0] != kind:
            return  # not the same metric: never add apples to pears
        values = sums.setdefault(name, {})
        for sample in family.get("samples", []):
            key = _key(sample)
            values[key] = values.get(key, 0.0) + float(sample[2])
