"""The monitoring commands of the command line: `metrics` (now, history, endpoint),
`alerts`, `events` (--follow) and the az-shaped views (`vpnlab az network ...`).
History and az views print Azure's own JSON shapes, as the REST API and the Azure CLI
do (no api_version key: the shape is Azure's)."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime

from rich.table import Table

from vpnlab.console import out, print_json
from vpnlab.model.yamlsrc import SourceError
from vpnlab.session import require_state, resolve_name, session

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(text: str, now: float, what: str) -> float:
    """now, an age (90s, 10m, 2h, 1d: that long ago) or an ISO 8601 time."""
    if text == "now":
        return now
    found = _AGO.fullmatch(text)
    if found:
        return now - float(found[1]) * _UNITS[found[2]]
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise SourceError(f"{what} {text!r}: allowed: now, an age (90s, 10m, 2h, 1d) "
                          f"or an ISO 8601 time (2026-12-04T03:00:00Z)") from None


def filters(text: str | None) -> dict[str, list[str]]:
    """Azure's $filter, the part the lab reads: Dim eq 'value' clauses joined by and
    (or: several values of one dimension); '*' is every value, each its own series."""
    out_: dict[str, list[str]] = {}
    if not text:
        return out_
    for clause in re.split(r"\s+(?:and|or)\s+", text.strip()):
        found = re.fullmatch(r"(\w+)\s+eq\s+'([^']*)'", clause.strip())
        if not found:
            raise SourceError(f"--filter: {clause!r} is not <Dimension> eq '<value>' (Azure's $filter; "
                              f"'*' for every value)")
        out_.setdefault(found[1], []).append(found[2])
    return out_


# ------------------------------------------------------------------ metrics
def cmd_metrics(args) -> int:
    if args.endpoint:
        from vpnlab.gateway.openmetrics import URL_FILE
        path = require_state(resolve_name(args.name)).dir / URL_FILE
        if not path.exists():
            raise SourceError("no OpenMetrics endpoint: the lab samples no metrics (vpnlab up --sample-seconds 0)")
        print(path.read_text().strip())
        return 0
    if any(x is not None for x in (args.since, args.until, args.interval, args.aggregation, args.metric,
                                   args.gateway, args.filter)):     # any of them asks for the history
        return _history(args)
    from vpnlab.gateway.metrics import metrics
    with session(args.name) as lab:
        rows = metrics(lab)
    if args.json:
        print_json({"metrics": rows})
        return 0
    # one table per set of dimensions (tunnel, instance, BGP peer), a column per metric
    groups: dict[tuple, dict[tuple, dict]] = {}
    for r in rows:
        dims = ("Resource", *r["dimensions"])
        groups.setdefault(dims, {}).setdefault((r["resource"], *r["dimensions"].values()), {})[r["name"]] = r["value"]
    for dims, by_key in groups.items():
        names = list(dict.fromkeys(n for values in by_key.values() for n in values))
        t = Table(*dims, *names, title="Azure Monitor metrics: " + ", ".join(dims))
        for key, values in by_key.items():
            t.add_row(*key, *(str(values.get(n, "-")) for n in names))
        out.print(t)
    return 0


def _history(args) -> int:
    from vpnlab.gateway import series
    from vpnlab.model.monitoring import catalogue, seconds
    state = require_state(resolve_name(args.name))
    now = time.time()
    start = moment(args.since or "1h", now, "--since")
    end = moment(args.until or "now", now, "--until")
    if end <= start:
        raise SourceError(f"--until must come after --since ({series.iso(start)} .. {series.iso(end)})")
    try:
        interval = seconds(args.interval) if args.interval and args.interval.startswith("P") \
            else int(float(args.interval or 60))
        aggregations = [series.aggregation(a) for a in (args.aggregation or "average").split(",")]
    except ValueError as e:
        raise SourceError(f"--interval / --aggregation: {e}") from None
    if interval < 1:
        raise SourceError("--interval: one second at least")
    start -= start % interval          # the grain's boundaries, as Azure aligns the timespan
    metrics = (args.metric or "").split(",") if args.metric else list(catalogue())
    unknown = [m for m in metrics if m not in catalogue()]
    if unknown:
        raise SourceError(f"--metric {', '.join(unknown)}: allowed: {', '.join(catalogue())}")
    print(json.dumps(series.query(state.dir, state.name, metrics, start, end, interval, aggregations,
                                  args.gateway, filters(args.filter), list(filters(args.filter))), indent=2))
    return 0


# ------------------------------------------------------------------ alerts, events
def cmd_alerts(args) -> int:
    from vpnlab.gateway import alerts
    entries = alerts.read(require_state(resolve_name(args.name)).dir)
    if args.json:
        print_json({"alerts": entries})
        return 0
    # one line per alert, as log viewers show it
    for e in map(alerts.summary, entries):
        print(f"{e['at']} {e['condition']:8} {e['severity']} {e['rule']} [{e['series']}] "
              f"{e['criterion']}: {e['value']:g}")
    return 0


def cmd_events(args) -> int:
    from vpnlab.gateway import events
    state = require_state(resolve_name(args.name))
    entries = events.read(state.dir, args.category)
    entries = entries[-args.last:] if args.last else entries
    if args.json and not args.follow:
        print_json({"events": entries})
        return 0
    for e in entries:
        _event_line(e, args.json)
    if args.follow:
        for e in events.follow(state.dir, args.category):
            _event_line(e, args.json)
    return 0


def _event_line(e: dict, as_json: bool):
    # one line per entry, as log viewers show it (a table would wrap the messages)
    if as_json:
        print(json.dumps(e), flush=True)
    else:
        print(" ".join((e["TimeGenerated"], e["Category"], e.get("OperationName", "-"),
                        e.get("instance_s") or "-", e["Message"])), flush=True)


# ------------------------------------------------------------------ az network ...
def cmd_az(args) -> int:
    from vpnlab.gateway import az
    with session(args.lab) as lab:
        if args.what == "list-bgp-peer-status":
            data = az.bgp_peer_status(lab, args.resource, args.peer)
        elif args.what == "list-learned-routes":
            data = az.learned_routes(lab, args.resource)
        elif args.what == "list-advertised-routes":
            data = az.advertised_routes(lab, args.resource, args.peer)
        elif args.what == "show":
            data = az.connection(lab, args.resource)
        else:
            data = az.connections(lab)
    print(json.dumps(data, indent=2))
    return 0


def add_parsers(sub):
    mt = sub.add_parser("metrics", help="Azure Monitor's gateway metrics: now, the lab's history "
                                        "(--since ...), or the OpenMetrics endpoint (--endpoint)")
    mt.add_argument("--name")
    mt.add_argument("--json", action="store_true")
    mt.add_argument("--endpoint", action="store_true", help="print the URL of the agent's OpenMetrics endpoint")
    mt.add_argument("--since", help="history from (now, 90s, 10m, 2h, 1d ago, or ISO 8601; default 1h)")
    mt.add_argument("--until", help="history until (default now)")
    mt.add_argument("--interval", help="grain: seconds or ISO 8601 (PT1M); default 60")
    mt.add_argument("--aggregation", help="average|minimum|maximum|total|count (avg, min, max, sum), "
                                          "comma-separated; default average")
    mt.add_argument("--metric", help="REST names, comma-separated (default: all)")
    mt.add_argument("--gateway", help="one gateway's metrics (default: all)")
    mt.add_argument("--filter", help="Azure's $filter: \"BgpPeerAddress eq '*'\" splits by peer")
    mt.set_defaults(func=cmd_metrics)
    al = sub.add_parser("alerts", help="metric alerts fired and resolved (the topology's metric_alerts)")
    al.add_argument("--name")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_alerts)
    from vpnlab.gateway.events import CATEGORIES
    ev = sub.add_parser("events", help="the gateway's diagnostic log, in Azure's shapes")
    ev.add_argument("--name")
    ev.add_argument("--json", action="store_true", help="(with --follow: one JSON object per line)")
    ev.add_argument("--category", choices=CATEGORIES)
    ev.add_argument("--last", type=int, default=50, help="the last N entries (default 50; 0: all)")
    ev.add_argument("--follow", "-f", action="store_true", help="then print entries as they come (Ctrl-C ends)")
    ev.set_defaults(func=cmd_events)
    azp = sub.add_parser("az", help="views shaped as the Azure CLI prints them: "
                                    "az network vnet-gateway | vpn-connection ...")
    group = azp.add_subparsers(dest="az_group", required=True).add_parser("network").add_subparsers(
        dest="az_resource", required=True)
    gw = group.add_parser("vnet-gateway").add_subparsers(dest="what", required=True)
    cn = group.add_parser("vpn-connection").add_subparsers(dest="what", required=True)
    for parent, verb, needs_name, peer in ((gw, "list-bgp-peer-status", True, False),
                                           (gw, "list-learned-routes", True, None),
                                           (gw, "list-advertised-routes", True, True),
                                           (cn, "show", True, None), (cn, "list", False, None)):
        p = parent.add_parser(verb)
        if needs_name:
            p.add_argument("-n", "--name", dest="resource", required=True)
        if peer is not None:
            p.add_argument("--peer", required=peer)
        p.add_argument("-g", "--resource-group", help="accepted as az takes it; the lab is --lab")
        p.add_argument("--lab", help="the lab (default: the only one running)")
        p.set_defaults(func=cmd_az, **({"peer": None} if peer is None else {}))
    return sub
