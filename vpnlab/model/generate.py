"""Topologies generated from a few choices (`vpnlab new`, and `make bench`'s N-site
designs): one VNet with its gateway, N sites with one device each, static routing or
BGP (over APIPA on an active-active gateway, as Azure's dual-redundancy design has it),
and point-to-site laptops. Every address comes from the lab's plan of ranges: the VNet
10.10.0.0/16, site i's LAN 10.20.i.0/24, site i's public IP 198.51.100.(10 + i)."""
from __future__ import annotations

import secrets

MAX_SITES = 100       # VpnGw4/5's tunnel limit; the addressing holds that many


def design(sites: int = 1, active_active: bool = True, bgp: bool = True, p2s: bool = False,
           sku: str | None = None, key: str | None = None) -> dict:
    """A topology as a dict. key: every connection's shared key with its index appended
    (reproducible files, for benchmarks); None: a random key per connection."""
    if not 1 <= sites <= MAX_SITES:
        raise ValueError(f"sites: 1 to {MAX_SITES}")
    sku = sku or ("VpnGw4" if sites > 30 else "VpnGw2" if active_active else "VpnGw1")
    gateway: dict = {"virtual_network": "hub", "sku": sku, "active_active": active_active}
    if bgp:
        gateway["bgp"] = {"asn": 65515}
        if active_active:       # each instance peers from its APIPA address [4.3]
            gateway["bgp"]["peering_addresses"] = [{"apipa_addresses": ["169.254.21.1"]},
                                                   {"apipa_addresses": ["169.254.22.1"]}]
    if p2s:
        gateway["vpn_client_configuration"] = {
            "address_pool": ["172.16.201.0/24"], "vpn_client_protocols": ["IkeV2", "OpenVPN"],
            "root_certificates": [{"name": "P2SRootCert"}]}
    sites_ = {}
    for i in range(sites):
        site: dict = {"gateway_ip": f"198.51.100.{10 + i}"}
        if bgp:
            peer = f"169.254.21.{100 + i}" if active_active else f"10.20.{i}.254"
            site |= {"bgp": {"asn": 65010 + i, "peering_address": peer},
                     "device": {"lan_prefixes": [f"10.20.{i}.0/24"]}}
        else:
            site["address_space"] = [f"10.20.{i}.0/24"]
        sites_[f"site{i}"] = site
    out = {
        "virtual_networks": {"hub": {"address_space": ["10.10.0.0/16"], "subnets": {
            "GatewaySubnet": {"address_prefix": "10.10.255.0/27"},
            "workload": {"address_prefix": "10.10.1.0/24", "vms": ["vm1"]}}}},
        "virtual_network_gateways": {"hub-gw": gateway},
        "local_network_gateways": sites_,
        "connections": {f"hub-to-site{i}": {
            "virtual_network_gateway": "hub-gw", "local_network_gateway": f"site{i}",
            "shared_key": f"{key}.{i}" if key else secrets.token_hex(16), "enable_bgp": bgp}
            for i in range(sites)},
    }
    if p2s:
        out["clients"] = {"laptop1": {"virtual_network_gateway": "hub-gw", "protocol": "IkeV2"},
                          "laptop2": {"virtual_network_gateway": "hub-gw", "protocol": "OpenVPN"}}
    return out
