"""Counters, gauges and one histogram, rendered in the Prometheus text format (0.0.4).

Every metric is named smtp_gateway_*; label values are few and bounded (listener addresses,
reply codes, limit names), never user input.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

import attrs

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HELP = {
    "connections_total": ("counter", "Connections accepted, per listener."),
    "connections_open": ("gauge", "Connections open now, per listener."),
    "auth_total": ("counter", "AUTH exchanges, by result."),
    "messages_total": ("counter", "Messages, by outcome and reply."),
    "bytes_received_total": ("counter", "Octets received from SMTP clients."),
    "bytes_sent_total": ("counter", "Octets sent to SMTP clients."),
    "limit_hits_total": ("counter", "Times a limit refused a client, by limit."),
    "timeouts_total": ("counter", "Connections closed by a timer, by phase."),
    "upstream_connected": ("gauge", "1 while the upstream queue is connected."),
    "draining": ("gauge", "1 while the node drains before stopping."),
    "upstream_publish_seconds": ("histogram", "Time from publish to JetStream's ack."),
}


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@attrs.define(eq=False)
class Metrics:
    _values: dict[str, dict[Labels, float]] = attrs.field(factory=lambda: defaultdict(dict))
    _buckets: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    _latency_sum: float = 0.0
    _latency_count: int = 0

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        series = self._values[name]
        key = _labels(labels)
        series[key] = series.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][_labels(labels)] = value

    def get(self, name: str, **labels: str) -> float:
        return self._values[name].get(_labels(labels), 0)

    def observe_latency(self, seconds: float) -> None:
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds
        self._latency_count += 1

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, text) in HELP.items():
            full = f"smtp_gateway_{name}"
            lines.append(f"# HELP {full} {text}")
            lines.append(f"# TYPE {full} {kind}")
            if kind == "histogram":
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS, self._buckets, strict=False):
                    cumulative += count
                    lines.append(f'{full}_bucket{{le="{bound}"}} {cumulative}')
                lines.append(f'{full}_bucket{{le="+Inf"}} {self._latency_count}')
                lines.append(f"{full}_sum {self._latency_sum}")
                lines.append(f"{full}_count {self._latency_count}")
                continue
            series = self._values.get(name) or {(): 0.0}
            for labels, value in sorted(series.items()):
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                suffix = f"{{{label_text}}}" if label_text else ""
                number = int(value) if float(value).is_integer() else value
                lines.append(f"{full}{suffix} {number}")
        return "\n".join(lines) + "\n"
