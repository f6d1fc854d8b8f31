# hub-gw-in0-p2s: rendered by vpnlab from openvpn-session.sh.j2.
# openvpn runs this when a client's session begins (client-connect, with $1 the file it
# reads the client's settings from) and ends (client-disconnect): one JSON line each,
# which the agent turns into P2SDiagnosticLog events.
# The pool is charon's too. charon gives addresses out from the bottom and routes each
# in table 220; this gives them out from the top, each one charon does not hold,
# and routes it to tun0 in table 101 (what arrives from the gateway goes there
# first). Adding that route is the reservation: it fails if the address is taken.
lease="/var/lib/vpnlab/golden/nodes/hub-gw-in0-p2s/leases/${trusted_ip}_${trusted_port}"
if [ "$script_type" = client-connect ]; then
    mkdir -p "/var/lib/vpnlab/golden/nodes/hub-gw-in0-p2s/leases"
    rm -f "$lease"
    held=$(ip -4 route show table 220 | cut -d' ' -f1)
    n=2886781438
    while [ "$n" -ge 2886781186 ]; do
        a="$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"
        if ! echo "$held" | grep -qxF "$a" && ip route add "$a/32" dev tun0 table 101 2>/dev/null; then
            echo "ifconfig-push $a 255.255.255.0" > "$1"
            echo "$a" > "$lease"
            break
        fi
        n=$((n - 1))
    done
    # no address left: the client is refused (a failing client-connect refuses it)
    [ -f "$lease" ] || { echo "no address left in the pool for $common_name" >&2; exit 1; }
fi
vip=$(cat "$lease" 2>/dev/null)
if [ "$script_type" = client-disconnect ] && [ -n "$vip" ]; then
    ip route del "$vip/32" dev tun0 table 101 2>/dev/null
    rm -f "$lease"
fi
if [ "$script_type" = client-connect ]; then
    # the routes Azure pushes, here rather than in openvpn.conf: a change (custom routes,
    # a new site) reaches each session that begins after it, without a restart
    echo 'push "route 10.70.0.0 255.255.0.0"' >> "$1"
    echo 'push "route 172.16.201.0 255.255.255.0"' >> "$1"
    echo 'push "route 10.99.0.0 255.255.0.0"' >> "$1"
    echo 'push "route 10.80.1.0 255.255.255.0"' >> "$1"
    :
fi
printf '{"event": "%s", "certificate": "%s", "address": "%s", "source_port": "%s", "virtual_ip": "%s", "radius": %s}\n' \
    "$script_type" "${username:-$common_name}" "$trusted_ip" "$trusted_port" "$vip" \
    "$([ -n "$username" ] && echo true || echo false)" \
    >> "/var/lib/vpnlab/golden/nodes/hub-gw-in0-p2s/openvpn-sessions.jsonl"
# it exits 0 otherwise: a client-connect script that fails refuses the client
exit 0
