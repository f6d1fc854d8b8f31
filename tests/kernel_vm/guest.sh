#!/bin/sh
# Runs as root inside the QEMU guest that tests/test_kernel_vm.py boots (make kernel-vm):
# what the guest kernel can do, then a small lab up on the kernel data plane, its status,
# what its data plane does (measure.py), and down. It writes
# only to OUT (the host's folder, shared read-write); the checkout and its venv are the
# host's, seen read-only. Usage: guest.sh CHECKOUT OUT TOPOLOGY
CHECKOUT=$1 OUT=$2 TOPOLOGY=$3
exec >"$OUT/guest.log" 2>&1
echo "kernel $(uname -r)"
modprobe -a tun esp4 xfrm_interface sch_netem || echo "modprobe failed"

# XFRM interfaces: what the kernel data plane is built on (issue 20)
ip netns add vpnlab-probe
if ip -n vpnlab-probe link add xfrm9 type xfrm if_id 9; then xfrm=true; else xfrm=false; fi
ip netns del vpnlab-probe
echo "{\"xfrm_interface\": $xfrm}" >"$OUT/kernel.json"

# the lab's folders stay in the guest (/tmp is its own): FRR's files must be frr's
export VPNLAB_STATE_DIR=/tmp/vpnlab-guest VPNLAB_WAIT_SCALE=${VPNLAB_WAIT_SCALE:-12}
cd "$CHECKOUT" || exit 1
start=$(date +%s)
.venv/bin/vpnlab up "$TOPOLOGY" --name guest --timers fast --dataplane "${DATAPLANE:-kernel}"
echo "up: exit $? after $(( $(date +%s) - start )) s"
.venv/bin/vpnlab status --name guest --json >"$OUT/status.json"
echo "status: exit $?"
start=$(date +%s)
.venv/bin/python tests/kernel_vm/measure.py guest "$OUT/dataplane.json"
echo "measure: exit $? after $(( $(date +%s) - start )) s"
mkdir -p "$OUT/nodes"
for d in /tmp/vpnlab-guest/guest/nodes/*; do
    mkdir -p "$OUT/nodes/${d##*/}" && cp "$d"/*.log "$d"/*.out "$OUT/nodes/${d##*/}/" 2>/dev/null
done
.venv/bin/vpnlab down --name guest
echo "down: exit $?"
echo finished >"$OUT/finished"
