"""vpnlab: the command line. Data to stdout (tables, or JSON on request), progress and
errors to stderr. Exit codes: 0 ok, 1 the lab failed, 2 bad input."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from rich.table import Table

from vpnlab import engine
from vpnlab.checks import faults
from vpnlab.console import err, out, print_json
from vpnlab.errors import LabError
from vpnlab.importer.common import write_private
from vpnlab.model import shipped
from vpnlab.model.names import check_lab_name
from vpnlab.model.yamlsrc import SourceError
from vpnlab.plan import clab
from vpnlab.plan.parts import DATAPLANES
from vpnlab.runtime import registry
from vpnlab.session import resolve_name, running_labs, session


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed
    try:
        return installed("vpnlab")
    except PackageNotFoundError:
        return "(not installed)"


def _fail(message: str):
    """Errors go to stderr unwrapped, so that file:line: field stays on one line."""
    print(message, file=sys.stderr, flush=True)


def _progress():
    status = err.status("starting")

    def update(message: str):
        err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", soft_wrap=True)
        status.update(message)
    return status, update


def cmd_up(args) -> int:
    path = shipped.resolve(args.file)
    _lint_before_up(path)
    status, update = _progress()
    with status:
        result = engine.up(path, name=args.name,
                           timers=args.timers, progress=update, runtime=args.runtime,
                           keep_on_failure=args.keep_on_failure, timeout=args.timeout,
                           clean_on_failure=args.clean_on_failure, dataplane=args.dataplane,
                           sample_seconds=args.sample_seconds)
    return _show_status(result, args.json)


def cmd_status(args) -> int:
    return _show_status(engine.status(resolve_name(args.name)), args.json)


def _show_status(s: dict, as_json: bool) -> int:
    """The lab's status; exit 0 when it has converged, 1 when not (what has not is said)."""
    if as_json:
        print_json(s)
        return 0 if s["converged"] else 1
    out.print(f"[bold]{s['name']}[/]  runtime {s['runtime']}  dataplane {s['dataplane']}"
              f"  timers {s['timers']}  phase {s['phase']}  delay/jitter: {s['impairments']['delay']}")
    if s["apply"]:
        out.print(f"[yellow]an apply started at {time.strftime('%H:%M:%S', time.localtime(s['apply']['started']))} "
                  + ("is running[/]" if s["apply"]["alive"] else
                     "was interrupted: the lab is part way to its new topology; 'vpnlab apply FILE' "
                     "again completes it[/]"))
    g = Table("gateway", "instance", "role", "public IP", "BGP address", title="Gateway instances")
    for x in s.get("gateways", []):
        g.add_row(x["gateway"], x["instance"], x["role"], x["public_ip"], x["bgp_address"])
    out.print(g)
    t = Table("tunnel", "gateway instance", "device", "IKE", "CHILD", "up (s)", title="Tunnels")
    for x in s["tunnels"]:
        color = "green" if x["state"] == "ESTABLISHED" else "red"
        t.add_row(x["tunnel"], x["gateway_instance"], x["device"], f"[{color}]{x['state']}[/]",
                  str(x["child_state"] or "-"), str(x["established_seconds"] or "-"))
    out.print(t)
    b = Table("node", "peer", "peer node", "kind", "state", "prefixes", title="BGP sessions")
    for x in s["bgp"]:
        color = "green" if x["state"] == "Established" else "red"
        b.add_row(x["node"], x["peer"], x["peer_node"], x["kind"], f"[{color}]{x['state']}[/]",
                  str(x["prefixes_received"] if x["prefixes_received"] is not None else "-"))
    out.print(b)
    up_t = sum(x["state"] == "ESTABLISHED" for x in s["tunnels"])
    up_b = sum(x["state"] == "Established" for x in s["bgp"])
    out.print(f"tunnels {up_t}/{len(s['tunnels'])} ESTABLISHED, "
              f"BGP sessions {up_b}/{len(s['bgp'])} Established")
    for d in s.get("own_devices", []):
        where = (f"attached from namespace {d['netns']}" if d["netns"]
                 else f"not attached: vpnlab attach {d['site']} --netns NS")
        out.print(f"site {d['site']} ({d['public_ip']}) brings its own device: {where}")
    for f in s.get("faults", []):
        since = time.strftime("%H:%M:%S", time.localtime(f["injected_at"]))
        out.print(f"[yellow]fault[/] {f['key']} {f['params'] or ''} since {since}")
    if not s["converged"]:
        err.print("not converged: " + "; ".join(s["not_converged"][:8])
                  + (f" (and {len(s['not_converged']) - 8} more)" if len(s["not_converged"]) > 8 else ""))
        return 1
    return 0


def _labs_to_remove(args) -> list[str]:
    if args.all:
        return running_labs()
    if args.name:
        return [check_lab_name(args.name)]
    labs = running_labs()
    if len(labs) > 1:
        raise LabError(f"several labs are up ({', '.join(labs)}): "
                              "choose one with --name, or --all")
    return labs


def cmd_down(args) -> int:
    names = _labs_to_remove(args)
    if not names:
        err.print("no lab is up")
    failed, removed = False, {}
    for name in names:
        problems = engine.down(name)
        for p in problems:
            _fail(f"{name}: {p}")
        failed |= bool(problems)
        removed[name] = problems
        err.print(f"lab {name}: {'left problems behind' if problems else 'down'}")
    if args.json:
        print_json({"labs": [{"name": n, "problems": p} for n, p in removed.items()]})
    return 1 if failed else 0


def cmd_exec(args) -> int:
    with session(args.name) as lab:
        if args.node not in lab.plan.nodes:
            raise SourceError(f"unknown node {args.node!r}; nodes: {', '.join(sorted(lab.plan.nodes))}")
        if not args.command:
            raise SourceError("give a command after --, e.g. vpnlab exec vm1 -- ping 10.20.1.10")
        argv = lab.backend.exec_argv(args.node, args.command)
    os.execvp(argv[0], argv)   # exit code passes through


def cmd_connect(args) -> int:
    """bash, vtysh or swanctl in a node, on that node's own sockets."""
    with session(args.name) as lab:
        if args.node not in lab.plan.nodes:
            raise SourceError(f"unknown node {args.node!r}; nodes: {', '.join(sorted(lab.plan.nodes))}")
        argv = lab.backend.exec_argv(args.node, lab.backend.tool_argv(args.node, args.tool, list(args.args)))
    os.execvp(argv[0], argv)


def cmd_logs(args) -> int:
    """A node's daemon logs, shared keys taken out; -f follows them."""
    name = resolve_name(args.name)
    files, hidden = engine.log_files(name, args.node, args.daemon)
    if not files:
        raise LabError(f"{args.node}: no log" + (f" of {args.daemon}" if args.daemon else "") + " yet")

    def shown(line: str) -> str:
        for s in hidden:
            line = line.replace(s, "(secret)")
        return line
    for f in files:
        if len(files) > 1:
            print(f"==> {f} <==")
        for line in f.read_text(errors="replace").splitlines()[-args.lines:]:
            print(shown(line))
    if args.follow:
        handles = [open(f, errors="replace") for f in files]
        for h in handles:
            h.seek(0, os.SEEK_END)
        while True:                    # until Ctrl-C: poll the files for new lines
            quiet = True
            for f, h in zip(files, handles):
                for line in h.readlines():
                    quiet = False
                    print((f"{f.parent.name}/{f.name}: " if len(files) > 1 else "") + shown(line.rstrip("\n")),
                          flush=True)
            if quiet:
                time.sleep(0.2)
    return 0


def cmd_list(args) -> int:
    labs = engine.labs()
    if args.json:
        print_json({"labs": labs})
        return 0
    t = Table("lab", "runtime", "timers", "phase", "nodes", "running", "folder", title="Labs on this machine")
    for x in labs:
        t.add_row(x["name"], x["runtime"], str(x["timers"] or "-"), x["phase"], str(x["nodes"] or "-"),
                  "yes" if x["alive"] else "no", str(x["folder"] or "-"))
    out.print(t)
    return 0


def cmd_wait(args) -> int:
    status, update = _progress()
    with status:
        s = engine.wait(resolve_name(args.name), args.timeout, progress=update)
    if args.json:
        print_json(s)
    else:
        err.print(f"lab {s['name']} converged")
    return 0


def cmd_save(args) -> int:
    written = engine.save(resolve_name(args.name), args.dir)
    if args.json:
        print_json({"files": [str(p) for p in written]})
    else:
        err.print(f"saved {len(written)} files in {args.dir}")
    return 0


def cmd_new(args) -> int:
    """A topology from a few choices, as YAML."""
    import yaml

    from vpnlab.model.generate import MAX_SITES, design
    if not 1 <= args.sites <= MAX_SITES:
        raise SourceError(f"--sites {args.sites}: allowed 1 to {MAX_SITES}")
    data = design(args.sites, active_active=not args.active_standby, bgp=not args.static, p2s=args.p2s,
                  sku=args.sku)
    kind = "active-standby" if args.active_standby else "active-active"
    head = (f"# vpnlab new: {args.sites} site(s), {kind}, {'static routing' if args.static else 'BGP'}"
            f"{', point-to-site' if args.p2s else ''}. Random shared keys: change them before sharing the file.\n")
    text = head + yaml.safe_dump(data, sort_keys=False)
    _must_validate(text, "vpnlab new: the design")      # what it writes validates (a --sku, say)
    if args.output:
        write_private(Path(args.output), text)          # it holds the shared keys
        err.print(f"wrote {args.output}; 'vpnlab up {args.output}' brings it up")
    else:
        print(text, end="")
    return 0


def cmd_completion(args) -> int:
    from vpnlab.reference import bash_completion
    print(bash_completion(parser()), end="")
    return 0


def cmd_graph(args) -> int:
    from vpnlab.checks import graph
    if args.file:                       # a design: no lab, no root
        from vpnlab.model.topology import load
        from vpnlab.plan.build import build
        path = shipped.resolve(args.file)
        topology = load(path)
        g, title = graph.design_graph(build(topology, "fast"), topology), path.stem
    else:
        with session(args.name) as lab:
            g = graph.design_graph(lab.plan, lab.topology, engine.status(lab.name, lab))
            title = f"lab {lab.name}"
    text = graph.html(g, title) if args.format == "html" else graph.FORMATS[args.format](g)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        err.print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_fail(args) -> int:
    params = {"percent": args.percent, "delay_ms": args.delay_ms, "jitter_ms": args.jitter_ms,
              "daemon": args.daemon}
    if args.planned is not None:
        params["planned"] = args.planned
    fault = engine.fail(resolve_name(args.name), args.kind, args.target,
                        **{k: v for k, v in params.items() if v is not None})
    if args.json:
        print_json({"fault": fault})
        return 0
    print(fault["key"])
    err.print(f"injected {fault['key']} {fault['params'] or ''}; undo with: vpnlab heal {fault['key']}",
              soft_wrap=True)
    return 0


def cmd_maintenance(args) -> int:
    status, update = _progress()
    with status:
        result = engine.maintenance(resolve_name(args.name), args.gateway, args.instance,
                                    args.unplanned, wait=not args.no_wait, progress=update)
    if args.json:
        print_json(result)
    elif "note" in result:
        err.print(result["note"])
    elif "active_after" in result:
        err.print(f"{args.gateway}: instance {result['active_after']} is active now "
                  f"(IN_{result['active_before']} was {'reset' if result['planned'] else 'lost'})")
    else:
        err.print(f"{args.gateway}: instance {result['instance']} is back")
    return 0


def cmd_heal(args) -> int:
    if not args.keys and not args.all:
        raise SourceError("name the faults to heal (see 'vpnlab status'), or --all")
    _, update = _progress()
    healed = engine.heal(resolve_name(args.name), None if args.all else args.keys,
                         wait=not args.no_wait, progress=update)
    if args.json:
        print_json({"healed": healed})
        return 0
    for f in healed:
        extra = f.get("detail", {}).get("packets_dropped")
        err.print(f"healed {f['key']}" + (f" ({extra} packets dropped while it lasted)"
                                          if extra is not None else ""))
    if not healed:
        err.print("no active fault")
    return 0


def cmd_attach(args) -> int:
    name = resolve_name(args.name)
    a = engine.attach(name, args.site, args.netns)
    if args.json:
        print_json(a)
        return 0
    err.print(f"attached namespace {a['netns']} as site {a['site']}: interface {a['interface']} "
              f"{a['public_ip']}/24, route {', '.join(a['routes'])}")
    err.print(f"Azure gateway public IPs to dial: {', '.join(a['gateways'])}")
    return 0


def cmd_detach(args) -> int:
    detached = engine.detach(resolve_name(args.name), args.site)
    if args.json:
        print_json({"site": args.site, "detached": detached})
    else:
        err.print(f"detached {args.site}" if detached else f"{args.site} was not attached")
    return 0


def cmd_report(args) -> int:
    from vpnlab.checks.report import write_html
    try:
        results = json.loads(open(args.results).read())
        write_html(results, args.output)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{args.results}: not a vpnlab results file ({type(e).__name__}: {e})") from None
    if args.json:
        print_json({"output": args.output, "scenarios": len(results.get("scenarios", []))})
    else:
        err.print(f"wrote {args.output} ({len(results.get('scenarios', []))} scenarios)")
    return 0


def cmd_export(args) -> int:
    hosts = [h for h in (args.host_addresses or "").split(",") if h]
    if args.format == "arm":
        from vpnlab.importer.arm_export import write_arm
        paths = write_arm(shipped.resolve(args.file), Path(args.dir))
    elif args.format == "terraform":
        from vpnlab.importer.tf_export import write_terraform
        paths = write_terraform(shipped.resolve(args.file), Path(args.dir))
    else:
        paths = engine.export(shipped.resolve(args.file), args.dir, args.format,
                              name=args.name, timers=args.timers, split_hosts=args.split_hosts,
                              host_addresses=hosts, image=args.image)
    if args.json:
        print_json({"files": [str(p) for p in paths]})
        return 0
    for path in paths:
        err.print(f"wrote {path}")
    if args.format == "clabernetes":
        err.print("run it on Kubernetes with clabverter (see README: Kubernetes with clabernetes)")
    return 0


def cmd_p2s(args) -> int:
    from vpnlab.checks import p2s_clients as p2s
    result = p2s.run(args.name, args.action, args.client)
    if args.json:
        print_json(result)
    elif args.action == "status":
        _p2s_tables(result)
    elif args.action == "connect":
        out.print(f"{result['client']} connected ({result['connected']} over {result['protocol']}) in "
                  f"{result['seconds']} s; virtual IP {', '.join(result['virtual_ips'][:5])}"
                  f"{' ...' if len(result['virtual_ips']) > 5 else ''}")
    else:
        out.print(f"{result['client']} disconnected ({result['closed']} closed)")
    return 0


def _p2s_tables(result: dict):
    t = Table(title="point-to-site clients")
    for col in ("client", "protocol", "gateway IP", "state", "virtual IP", "certificate thumbprint"):
        t.add_column(col)
    for c in result["clients"]:
        thumbs = [v for v in c["certificates"].values() if v]
        t.add_row(c["client"], c["protocol"], c["gateway_ip"], c["state"], ", ".join(c["virtual_ips"][:3]),
                  thumbs[0] if len(thumbs) == 1 else f"{len(c['certificates'])} certificates")
    out.print(t)
    g = Table(title="gateway side")
    for col in ("instance", "protocol", "pool", "connections"):
        g.add_column(col)
    for s in result["gateways"]:
        g.add_row(s["instance"], s["protocol"], ", ".join(s["pool"]), str(s["connections"]))
    out.print(g)
    for gw, revoked in result["revoked"].items():
        for r in revoked:
            out.print(f"{gw} revokes {r['name']}: {r['thumbprint']}"
                      + ("" if r["enforced"] else " (not issued by the lab: nothing to enforce)"))


def cmd_apply(args) -> int:
    from vpnlab.change import apply as change
    name = resolve_name(args.name)
    planned = change.apply(name, args.file, azure_only=args.azure_only, plan_only=True)
    if not (args.json and not args.plan):
        _show_change_plan(planned, args.json)
    if args.plan:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise SourceError("vpnlab apply: --yes to apply without asking (stdin is not a terminal), "
                              "or --plan to see the change plan only")
        if input("apply these changes to the running lab? [y/N] ").strip().lower() not in ("y", "yes"):
            err.print("nothing applied")
            return 0
    status, update = _progress()
    with status:
        result = change.apply(name, args.file, azure_only=args.azure_only, wait=not args.no_wait,
                              progress=update)
    if args.json:
        print_json(result)
        return 0
    for row in result["timeline"]:
        err.print(f"  {row['at_s']:7.3f} s  {row['what']} ({row['seconds']} s)")
    err.print(f"applied in {result['seconds']} s" + (f"; converged after {result['converged_s']} s"
                                                       if result.get("converged_s") else ""))
    if result.get("p2s_sessions_ended"):
        err.print("point-to-site sessions ended: " + ", ".join(result["p2s_sessions_ended"]))
    if result["device_not_updated"]:
        err.print("the devices of " + ", ".join(result["device_not_updated"]) + " still run the old "
                  "configuration (--azure-only): 'vpnlab apply' again without it updates them")
    return 0


def _show_change_plan(planned: dict, as_json: bool):
    """Terraform's way: + added, - removed, ~ changed, each with Azure's impact."""
    if as_json:
        print_json(planned)
        return
    if not planned["changes"] and not planned["steps"]:
        out.print("no changes: the running lab matches the topology")
        return
    out.print(f"[bold]change plan for lab {planned['lab']}[/]")
    for c in planned["changes"]:
        mark = {"add": "[green]+[/]", "remove": "[red]-[/]", "change": "[yellow]~[/]"}[c["action"]]
        out.print(f"{mark} {c['resource']}: [bold]{c['meaning']}[/]", highlight=False)
        for f in c["fields"]:
            what = f"{f['path']}: {f['old']} -> {f['new']}" if f.get("path") else c["action"]
            out.print(f"    {what}  [dim][{f['source']}][/]", highlight=False, soft_wrap=True)
            if f.get("says"):
                out.print(f"      Azure: {f['says']}", highlight=False, soft_wrap=True)
            if f.get("unconfirmed"):
                out.print(f"      UNCONFIRMED: {f['unconfirmed']}", highlight=False, soft_wrap=True)
    if planned["steps"]:
        out.print("[bold]what the lab does[/]")
    for s in planned["steps"]:
        out.print(f"  {s['node']}: {s['what']}", highlight=False, soft_wrap=True)
    if planned["resets"]:
        out.print("  IKE starts again on: " + ", ".join(planned["resets"]), highlight=False)
    for gateway, users in planned.get("p2s_users_ended", {}).items():
        out.print(f"  {gateway}: the point-to-site sessions of {', '.join(users)} end", highlight=False)


def cmd_reset(args) -> int:
    from vpnlab.change import apply as change
    result = change.reset_connection(resolve_name(args.name), args.connection, wait=not args.no_wait)
    if args.json:
        print_json(result)
    else:
        err.print(f"connection {args.connection} reset: {', '.join(result['tunnels'])}"
                  + (f"; up again after {result['up_again_s']} s" if result.get("up_again_s") else ""))
    return 0


def cmd_validate(args) -> int:
    from vpnlab.model.topology import load
    path = shipped.resolve(args.file)
    load(path)
    if args.json:
        print_json({"file": str(path), "valid": True})
    else:
        err.print(f"{path}: valid")
    return 0


def cmd_lint(args) -> int:
    from vpnlab import lint
    from vpnlab.lint import output
    path = shipped.resolve(args.file)
    findings = lint.lint_file(path)
    if args.format == "sarif":
        text = output.sarif(findings, version())
    elif args.format == "json":
        text = output.as_json(str(path), findings)
    else:
        text = output.text(findings)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 1 if lint.has_errors(findings) else 0


def cmd_import(args) -> int:
    from vpnlab.importer import import_file, to_yaml
    topology, report = import_file(args.file, args.parameters)
    text = to_yaml(topology, report)
    for line in report.lines()[1:]:
        err.print(line, soft_wrap=True, markup=False, highlight=False)
    if args.output:
        write_private(Path(args.output), text)       # it holds the shared keys
        err.print(f"wrote {args.output}")
    else:
        print(text, end="")
    if report.required:
        err.print(f"{len(report.required)} value(s) to fill in before vpnlab up (marked !required)")
        return 0
    _must_validate(text, args.output or "the imported design", "does not validate yet:\n")
    return 0


def _must_validate(text: str, named: str, why: str = "") -> None:
    """A topology this command wrote validates; its messages name it as `named`."""
    import tempfile

    from vpnlab.model.topology import load
    with tempfile.TemporaryDirectory() as tmp:
        check = Path(tmp) / "topology.yaml"
        check.write_text(text)
        try:
            load(check)
        except SourceError as e:
            message = str(e).replace(str(check), named)
            raise SourceError(f"{named} {why}{message}" if why else message) from None


def _lint_before_up(path) -> None:
    """up prints the design's lint errors and warnings (not notes) and never stops on them."""
    from vpnlab import lint
    shown = [f for f in lint.lint_file(path) if f.severity != "note"]
    for f in shown:
        err.print(f.text(), soft_wrap=True, markup=False, highlight=False)
    if shown:
        err.print(f"[dim]{len(shown)} lint finding(s), not stopping: vpnlab lint {path} explains each[/]")


def cmd_schema(args) -> int:
    from vpnlab.reference import topology_schema
    print(json.dumps(topology_schema(), indent=1))
    return 0


def cmd_image(args) -> int:
    """The node image of the docker and containerlab runtimes, from the installed package."""
    from vpnlab.runtime import image
    tag = image.node_image() if args.action == "show" else image.build(progress=lambda m: err.print(m))
    if args.json:
        print_json({"image": tag})
    elif args.action == "show":
        print(tag)
    return 0


TOPOLOGY_HELP = (f"topology file, or the name of one that comes with vpnlab ({', '.join(shipped.names())}); "
                 f"default: {shipped.DEFAULT}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpnlab", description="Azure VPN Gateway lab with strongSwan and FRR")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="verb", required=True)
    up = sub.add_parser("up", help="build, start and wait for convergence")
    up.add_argument("file", nargs="?", help=TOPOLOGY_HELP)
    up.add_argument("--name", help="lab name (default: the file's stem)")
    up.add_argument("--timers", default="azure", choices=["azure", "fast"])
    up.add_argument("--runtime", default=registry.DEFAULT, choices=registry.names(),
                    help="netns: namespaces on this host (default); docker: containers from "
                         "the node image (make image); containerlab: deployed by containerlab")
    up.add_argument("--dataplane", default="auto", choices=["auto", *DATAPLANES],
                    help="where the site-to-site tunnels' ESP runs: kernel (XFRM interfaces, the kernel's "
                         "speed; needs ESP in the kernel), userspace (libipsec, any kernel); "
                         "auto (default): the kernel's when it has ESP")
    up.add_argument("--sample-seconds", type=float,
                    help="how often the gateway's agent samples Azure Monitor's metrics into the lab's "
                         "time series, endpoint and alert rules (default 1; 0: off)")
    up.add_argument("--json", action="store_true")
    up.add_argument("--timeout", type=float, help="seconds to wait for convergence in all (default: until "
                                                  "nothing progresses for the timer profile's budget); "
                                                  "VPNLAB_WAIT_SCALE multiplies every wait, this one too")
    up.add_argument("--clean-on-failure", action="store_true",
                    help="a lab that did not come up leaves nothing, not even its configs and logs")
    up.add_argument("--keep-on-failure", action="store_true",
                    help="leave a lab that did not converge running, for debugging")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="tunnels and BGP sessions, live")
    st.add_argument("--name")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    dn = sub.add_parser("down", help="remove a lab (idempotent)")
    g = dn.add_mutually_exclusive_group()
    g.add_argument("--name")
    g.add_argument("--all", action="store_true")
    dn.set_defaults(func=cmd_down)
    ex = sub.add_parser("exec", help="run a command in a node")
    ex.add_argument("--name")
    ex.add_argument("node")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    gr = sub.add_parser("graph", help="the design as a picture: of a topology file, or of a running lab "
                                      "with its tunnels' and sessions' state")
    gr.add_argument("file", nargs="?", help="topology file or shipped design (no lab needed); "
                                            "without it, the running lab")
    gr.add_argument("--name", help="the running lab (default: the only one)")
    gr.add_argument("--format", default="mermaid", choices=["mermaid", "dot", "svg", "html"],
                    help="html: one page with the SVG and tables of nodes, links, tunnels and sessions")
    gr.add_argument("-o", "--output", help="file to write (default: stdout)")
    gr.set_defaults(func=cmd_graph)
    fl = sub.add_parser("fail", help="inject a fault (see 'vpnlab fail --help')",
                        description=faults.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fl.add_argument("kind", choices=faults.KINDS)
    fl.add_argument("target", help="a node (instance, device, crash) or NODE:IFACE (link faults)")
    fl.add_argument("--name")
    pl = fl.add_mutually_exclusive_group()
    pl.add_argument("--planned", dest="planned", action="store_true", default=None,
                    help="graceful: BGP Cease and IKE DELETE before the daemons stop")
    pl.add_argument("--unplanned", dest="planned", action="store_false",
                    help="links down and daemons killed: peers must notice by themselves")
    fl.add_argument("--percent", type=float, help="loss (and delay): share of packets dropped")
    fl.add_argument("--delay-ms", type=float, help="delay (netem only)")
    fl.add_argument("--jitter-ms", type=float, help="jitter (netem only)")
    fl.add_argument("--daemon", help="crash: charon (tunnel end), bgpd (router), charon or openvpn "
                                     "(P2S server), freeradius (RADIUS host)")
    fl.set_defaults(func=cmd_fail)
    hl = sub.add_parser("heal", help="undo faults and wait for convergence")
    hl.add_argument("keys", nargs="*", metavar="FAULT", help="e.g. instance:hub-gw-in0")
    hl.add_argument("--all", action="store_true")
    hl.add_argument("--name")
    hl.add_argument("--no-wait", action="store_true", help="return once the daemons run again")
    hl.set_defaults(func=cmd_heal)
    mn = sub.add_parser("maintenance", help="Azure's reset of a gateway instance: failover "
                        "(active-standby) or reboot (active-active)")
    mn.add_argument("gateway", help="a virtual network gateway of the topology")
    mn.add_argument("--instance", type=int, choices=(0, 1),
                    help="IN_0 or IN_1 (default: the active one; IN_0 on active-active)")
    mn.add_argument("--unplanned", action="store_true",
                    help="no BGP Cease, no IKE DELETE: the instance just dies")
    mn.add_argument("--no-wait", action="store_true", help="return before the lab converged again")
    mn.add_argument("--name")
    mn.add_argument("--json", action="store_true")
    mn.set_defaults(func=cmd_maintenance)
    at = sub.add_parser("attach", help="connect your own device's namespace as a managed: false site")
    at.add_argument("site", help="a local network gateway with managed: false")
    at.add_argument("--netns", required=True, help="an existing network namespace (ip netns add NAME)")
    at.add_argument("--name")
    at.add_argument("--json", action="store_true")
    at.set_defaults(func=cmd_attach)
    de = sub.add_parser("detach", help="disconnect a namespace attached with 'vpnlab attach'")
    de.add_argument("site")
    de.add_argument("--name")
    de.set_defaults(func=cmd_detach)
    from vpnlab import cli_monitoring
    cli_monitoring.add_parsers(sub)
    rp = sub.add_parser("report", help="render a scenario run's JSON results as HTML")
    rp.add_argument("results", nargs="?", default="reports/vpnlab-results.json")
    rp.add_argument("-o", "--output", default="reports/vpnlab-report.html")
    rp.set_defaults(func=cmd_report)
    ex = sub.add_parser("export", help="write the lab as containerlab files, or the design as an ARM "
                                       "template (arm) or Terraform (terraform), start nothing")
    ex.add_argument("file", nargs="?", help=TOPOLOGY_HELP)
    ex.add_argument("--format", required=True, choices=[*clab.FORMATS, "arm", "terraform"])
    ex.add_argument("dir", help="folder to write (created)")
    ex.add_argument("--name", help="lab name (default: the file's stem)")
    ex.add_argument("--timers", default="azure", choices=["azure", "fast"])
    ex.add_argument("--image", help="the node image as the nodes' hosts pull it (default: the "
                                    "local build, vpnlab/node:<digest>)")
    ex.add_argument("--split-hosts", type=int, metavar="N",
                    help="clab only: one topology per host, VXLAN links between them")
    ex.add_argument("--host-addresses", metavar="IP,IP,...",
                    help="with --split-hosts: each host's own address (the VXLAN remotes)")
    ex.set_defaults(func=cmd_export)
    ps = sub.add_parser("p2s", help="point-to-site clients: connect, disconnect, status")
    ps.add_argument("action", choices=("connect", "disconnect", "status"))
    ps.add_argument("client", nargs="?", help="a client of the topology's clients: (connect, disconnect)")
    ps.add_argument("--name")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=cmd_p2s)
    ap = sub.add_parser("apply", help="change a running lab to a new topology, as Azure applies the change")
    ap.add_argument("file", help="the new topology")
    ap.add_argument("--name")
    ap.add_argument("--plan", action="store_true", help="show the change plan only")
    ap.add_argument("--yes", action="store_true", help="apply without asking")
    ap.add_argument("--azure-only", action="store_true",
                    help="change Azure's side only: the on-prem devices keep their configuration "
                         "until an apply without it (the order of a real change)")
    ap.add_argument("--no-wait", action="store_true", help="return before the lab converged on the change")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=cmd_apply)
    rs = sub.add_parser("reset", help="Azure's 'Reset connection': the connection's tunnels start IKE again")
    rs.add_argument("what", choices=("connection",))
    rs.add_argument("connection", help="a connection of the topology")
    rs.add_argument("--name")
    rs.add_argument("--no-wait", action="store_true")
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_reset)
    im = sub.add_parser("import", help="a real design as a topology: ARM template (Bicep: compile it with "
                                       "az bicep build), Terraform plan or state JSON (terraform show -json)")
    im.add_argument("file", help="the template or Terraform JSON")
    im.add_argument("-o", "--output", help="the topology file to write (default: stdout)")
    im.add_argument("--parameters", help="an ARM parameters file, or a tfvars JSON file for a .tf.json")
    im.set_defaults(func=cmd_import)
    li = sub.add_parser("lint", help="Azure's pitfalls and security practice in a valid design "
                                     "(docs/lint-rules.md); exits 1 on errors")
    li.add_argument("file", help=TOPOLOGY_HELP.split(";")[0])
    li.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                    help="sarif: SARIF 2.1.0, for code scanning")
    li.add_argument("-o", "--output", help="write to this file instead of stdout")
    li.set_defaults(func=cmd_lint)
    va = sub.add_parser("validate", help="check a topology file, start nothing")
    va.add_argument("file", help=TOPOLOGY_HELP.split(";")[0])
    va.set_defaults(func=cmd_validate)
    sc = sub.add_parser("schema", help="the topology file's JSON Schema, for editors")
    sc.set_defaults(func=cmd_schema)
    im = sub.add_parser("image", help="the node image of the docker and containerlab runtimes")
    im.add_argument("action", choices=["build", "show"],
                    help="build: its base (pulled, or made with debootstrap) and the image, unless there; "
                         "show: its name")
    im.set_defaults(func=cmd_image)
    ls = sub.add_parser("list", help="the labs on this machine")
    ls.set_defaults(func=cmd_list)
    wt = sub.add_parser("wait", help="until the lab has converged (tunnels, BGP sessions, routes)")
    wt.add_argument("--name")
    wt.add_argument("--timeout", type=float, help="seconds in all (default: until nothing progresses for "
                                                  "the timer profile's budget)")
    wt.set_defaults(func=cmd_wait)
    cn = sub.add_parser("connect", help="bash, vtysh or swanctl in a node, on its own daemons' sockets")
    cn.add_argument("node")
    cn.add_argument("--tool", default="bash", choices=["bash", "vtysh", "swanctl"],
                    help="its arguments go after -- (swanctl without any: --list-sas)")
    cn.add_argument("--name")
    cn.set_defaults(func=cmd_connect)
    lg = sub.add_parser("logs", help="a node's daemon logs (node 'agent': the gateway's agent), shared keys "
                                     "taken out")
    lg.add_argument("node")
    lg.add_argument("--name")
    lg.add_argument("--daemon", help="one daemon's log: charon, frr, openvpn, radius")
    lg.add_argument("-n", "--lines", type=int, default=50, help="lines shown first (default 50)")
    lg.add_argument("-f", "--follow", action="store_true", help="then follow the logs until Ctrl-C")
    lg.set_defaults(func=cmd_logs)
    sv = sub.add_parser("save", help="what the daemons run now, per node: FRR's running configuration, "
                                     "charon's loaded connections, the nftables ruleset")
    sv.add_argument("dir", help="folder to write (created)")
    sv.add_argument("--name")
    sv.set_defaults(func=cmd_save)
    nw = sub.add_parser("new", help="a topology from a few choices, as YAML")
    nw.add_argument("--sites", type=int, default=1, help="on-prem sites, one device each (1-100)")
    nw.add_argument("--active-standby", action="store_true", help="default: active-active")
    nw.add_argument("--static", action="store_true", help="static routing; default: BGP (over APIPA "
                                                          "when active-active)")
    nw.add_argument("--p2s", action="store_true", help="point-to-site: a pool, a root, two laptops")
    nw.add_argument("--sku", help="default: VpnGw2 active-active, VpnGw1 active-standby, VpnGw4 past 30 sites")
    nw.add_argument("-o", "--output", help="file to write (mode 0600: it holds the shared keys)")
    nw.set_defaults(func=cmd_new)
    co = sub.add_parser("completion", help="a bash completion script: source <(vpnlab completion bash)")
    co.add_argument("shell", choices=["bash"])
    co.set_defaults(func=cmd_completion)
    # data as JSON on every verb whose output is data (not a document, a shell or a stream)
    documents = {"exec", "graph", "schema", "connect", "logs", "new", "completion", "json"}
    for name, sp in sub.choices.items():
        if name not in documents and not any("--json" in a.option_strings for a in sp._actions):
            sp.add_argument("--json", action="store_true", help="data as JSON on stdout")
    return p


_MAIN_PID = os.getpid()


def _terminate(signum, frame):
    """SIGTERM ends vpnlab the way Ctrl-C does, so that a half-built lab is removed.
    Helper processes forked by libraries (pyroute2) inherit the handler: they just exit."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # Our own handling whatever was inherited: a background job of a non-interactive
    # shell starts with SIGINT ignored, and `up` must still clean up when interrupted.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    argv = sys.argv[1:] if argv is None else list(argv)
    tool_args = []
    if argv[:1] == ["connect"] and "--" in argv:     # the tool's own arguments, whatever they are
        argv, tool_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = parser().parse_args(argv)
    args.args = tool_args
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    offline = args.verb in ("validate", "lint", "import", "report", "export", "image", "schema", "new", "completion") or \
        (args.verb == "graph" and args.file)
    if not offline and os.geteuid() != 0:
        err.print("vpnlab needs root: it creates network namespaces and starts daemons")
        return 2
    try:
        return args.func(args)
    except SourceError as e:
        _fail(str(e))
        return 2
    except LabError as e:
        _fail(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
