"""`GET /metrics`: the orchestrator's and the stream hub's figures in the Prometheus text format.

A collector reads them at scrape time (no work on the hot path beyond the store's counters),
into a registry of the app's own, so two apps in one process never share series.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .hub import Hub
from .model import COUNTED, LEVELS, STATUSES
from .orchestrator import Orchestrator

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StepstreamCollector(Collector):
    def __init__(self, orch: Orchestrator, hub: Hub) -> None:
        self.orch = orch
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.orch.stats()
        counters = stats["counters"]
        jobs = GaugeMetricFamily("stepstream_jobs", "Manager jobs held, by status", labels=["status"])
        for status in STATUSES:
            if status != "skipped":
                jobs.add_metric([status], stats["managers"].get(status, 0))
        yield jobs
        transitions = CounterMetricFamily("stepstream_child_transitions", "Child status changes, by new status",
                                          labels=["status"])
        for status in COUNTED:
            transitions.add_metric([status], counters.get(f"child_{status}", 0))
        yield transitions
        logs = CounterMetricFamily("stepstream_log_lines", "Log lines written, by level", labels=["level"])
        for level in LEVELS:
            logs.add_metric([level], counters.get(f"log_{level}", 0))
        yield logs
        events = CounterMetricFamily("stepstream_events", "Events emitted, by type", labels=["type"])
        for kind in sorted(k for k in counters if not k.startswith(("child_", "log_"))):
            events.add_metric([kind], counters[kind])
        yield events
        yield GaugeMetricFamily("stepstream_seq", "The seq of the latest change", value=stats["seq"])
        yield GaugeMetricFamily("stepstream_stream_connections", "Open event-stream connections",
                                value=self.hub.connections)
        yield CounterMetricFamily("stepstream_stream_merged_events",
                                  "Progress events merged away because a later one superseded them",
                                  value=self.hub.merged)
        yield CounterMetricFamily("stepstream_stream_snapshot_replacements",
                                  "Fresh snapshots sent instead of events (resumed too late or fell behind)",
                                  value=self.hub.snapshots)


def registry_for(orch: Orchestrator, hub: Hub) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StepstreamCollector(orch, hub))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

