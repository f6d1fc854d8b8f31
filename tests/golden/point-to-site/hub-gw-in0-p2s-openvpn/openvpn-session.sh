# hub-gw-in0-p2s-openvpn: rendered by vpnlab from openvpn-session.sh.j2.
# openvpn runs this when a client's session begins (client-connect) and ends
# (client-disconnect): one JSON line each, which the agent turns into P2SDiagnosticLog
# events. It always exits 0: a client-connect script that fails refuses the client.
printf '{"event": "%s", "certificate": "%s", "address": "%s", "source_port": "%s", "virtual_ip": "%s"}\n' \
    "$script_type" "$common_name" "$trusted_ip" "$trusted_port" "$ifconfig_pool_remote_ip" \
    >> "/var/lib/vpnlab/golden/nodes/hub-gw-in0-p2s-openvpn/openvpn-sessions.jsonl"
exit 0
