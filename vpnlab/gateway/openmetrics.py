"""The gateway's metrics as an OpenMetrics / Prometheus endpoint (prometheus_client),
served by the agent on loopback: Azure's REST names as metric names, Azure's
dimensions as labels, plus `Resource` (the gateway). Gauges show the last sample;
counters (bytes, packets, drops) the total counted since the agent started, so that
PromQL's rate() and increase() work as on any exporter. The URL is written to the lab
folder (openmetrics.url) for `vpnlab metrics --endpoint` and scrape configurations."""
from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from vpnlab.model.monitoring import catalogue

URL_FILE = "openmetrics.url"


class Exporter:
    def __init__(self, lab_dir: Path, address: str):
        self.lock = threading.Lock()
        self.gauges: dict[tuple, float] = {}
        self.totals: dict[tuple, float] = {}
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        host, port = address.rsplit(":", 1)
        self.server, _ = start_http_server(int(port), host, registry)
        self.url = f"http://{host}:{self.server.server_port}/metrics"
        (Path(lab_dir) / URL_FILE).write_text(self.url + "\n")

    def update(self, samples: list[dict]):
        """The samples of one round (series.Sampler): counts are added up."""
        with self.lock:
            for row in samples:
                key = (row["name"], row["resource"], tuple(row["dimensions"].items()))
                if catalogue()[row["name"]].get("counter"):
                    self.totals[key] = self.totals.get(key, 0) + row["value"]
                else:
                    self.gauges[key] = row["value"]

    def collect(self):
        with self.lock:
            gauges, totals = dict(self.gauges), dict(self.totals)
        families: dict[str, object] = {}
        for store, kind in ((gauges, GaugeMetricFamily), (totals, CounterMetricFamily)):
            for (name, resource, dims), value in sorted(store.items()):
                info = catalogue()[name]
                family = families.get(name)
                if family is None:
                    family = families[name] = kind(name, f"{info['display']} ({info['unit']})",
                                                   labels=["Resource", *(d for d, _ in dims)])
                family.add_metric([resource, *(v for _, v in dims)], value)
        yield from families.values()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
