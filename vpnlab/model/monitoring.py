"""Azure Monitor in the topology: the metric catalogue (metrics.yaml) and metric alert
rules in the shape of `Microsoft.Insights/metricAlerts` [ALERTS], in snake_case as the
rest of the file: scopes (gateways), one static-threshold criterion (metric, dimension
filter, operator, threshold, time aggregation), window size, evaluation frequency."""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError

from vpnlab.model.defaults import defaults
from vpnlab.model.fields import Name

_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


@cache
def catalogue() -> dict[str, dict]:
    """Metric REST name -> display, unit, aggregation, dimensions."""
    return yaml.safe_load(Path(__file__).with_name("metrics.yaml").read_text())


def seconds(duration: str) -> int:
    """An ISO 8601 duration (PT1M, PT30S, P1D) in seconds."""
    found = _DURATION.fullmatch(duration)
    if not found or duration in ("P", "PT"):
        raise ValueError(f"{duration!r} is not an ISO 8601 duration (PT30S, PT1M, PT1H, P1D)")
    d, h, m, s = (int(x or 0) for x in found.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


def duration(seconds_: float) -> str:
    """Seconds as an ISO 8601 duration, the largest unit that divides them."""
    s = int(seconds_)
    for unit, size in (("H", 3600), ("M", 60)):
        if s and s % size == 0:
            return f"PT{s // size}{unit}"
    return f"PT{s}S"


def _duration(value):
    if not isinstance(value, str):
        raise PydanticCustomError("duration", "a duration is text such as PT1M, got {value}",
                                  {"value": repr(value)})
    try:
        if seconds(value) < 1:
            raise ValueError
    except ValueError:
        raise PydanticCustomError("duration", "'{value}' is not an ISO 8601 duration of a second or more "
                                  "(PT30S, PT1M, PT5M, PT1H, P1D)", {"value": value}) from None
    return value


Duration = Annotated[str, BeforeValidator(_duration)]
Operator = Literal["GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual", "Equals"]
Aggregation = Literal["Average", "Minimum", "Maximum", "Total", "Count"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlertDimension(Model):
    """Which time series a rule looks at: Include or Exclude values of a dimension;
    "*" includes every value, each series then evaluated on its own (Azure's split)."""
    name: str
    operator: Literal["Include", "Exclude"] = "Include"
    values: list[str] = Field(min_length=1)


class MetricAlert(Model):
    scopes: list[Name] = Field(min_length=1)           # virtual network gateways
    metric_name: str
    dimensions: list[AlertDimension] = []
    operator: Operator
    threshold: Annotated[float, Strict()]
    time_aggregation: Aggregation
    window_size: Duration = "PT5M"
    evaluation_frequency: Duration = "PT1M"
    severity: Annotated[int, Strict(), Field(ge=0, le=4)] = 3
    auto_mitigate: Annotated[bool, Strict()] = True
    enabled: Annotated[bool, Strict()] = True
    description: str = ""


def alert_errors(t):
    """Alert rules that name what exists: gateways, metrics and their dimensions; a
    window no shorter than the frequency, and both no shorter than one sample."""
    sample = defaults()["monitoring"]["sample_seconds"]
    for name, rule in t.metric_alerts.items():
        loc = ("metric_alerts", name)
        for i, gw in enumerate(rule.scopes):
            if gw not in t.virtual_network_gateways:
                yield loc + ("scopes", i), (f"unknown gateway '{gw}'; gateways: "
                                            f"{', '.join(sorted(t.virtual_network_gateways)) or 'none'}")
        metric = catalogue().get(rule.metric_name)
        if metric is None:
            yield loc + ("metric_name",), (f"'{rule.metric_name}' is not a metric the lab emulates; "
                                           f"allowed: {', '.join(sorted(catalogue()))}")
            continue
        for i, dim in enumerate(rule.dimensions):
            if dim.name not in metric["dimensions"]:
                yield loc + ("dimensions", i, "name"), (
                    f"{rule.metric_name} has no dimension '{dim.name}'; allowed: {', '.join(metric['dimensions'])}")
        window, every = seconds(rule.window_size), seconds(rule.evaluation_frequency)
        if window < every:
            yield loc + ("window_size",), (f"{rule.window_size} is shorter than evaluation_frequency "
                                           f"{rule.evaluation_frequency}; Azure requires window >= frequency")
        if every < sample:
            yield loc + ("evaluation_frequency",), f"shorter than the lab's sampling ({sample} s)"
