#!/usr/bin/env bash
# Regenerates the frames captured from real lab traffic that the wire tests parse: curl over
# IPv4 and IPv6, ping (echo, fragments), ICMP port unreachable, ARP and neighbour discovery
# and VXLAN from the kernel's own vxlan driver (this kernel has no 8021q, so VLAN frames come
# from the builder). Run as root from anywhere:
#   fastpath/wire/tests/captures/capture.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../../.."
cargo xtask lab up 1 >/dev/null
trap 'cargo xtask lab down >/dev/null' EXIT
node=skiff-lab-node client=skiff-lab-client
pod4=198.18.128.10 pod6=fd00:0:0:128::10

# capture NAME COMMAND…: records the node's uplink while COMMAND runs.
capture() {
    local name=$1; shift
    ip netns exec $node tcpdump -q --immediate-mode -i uplink -s 0 -U -w "$here/$name.pcap" 2>/dev/null & local pid=$!
    sleep 1
    "$@" >/dev/null || true
    sleep 0.5
    kill $pid; wait $pid 2>/dev/null || true
}
in_client() { ip netns exec $client "$@"; }

# Every command runs inside the lab's client namespace.
capture tcp-http in_client curl -sS http://$pod4/ -g http://[$pod6]/
capture icmp-echo in_client sh -c "ping -c 1 $pod4; ping -c 1 $pod6"
capture fragments in_client sh -c "ping -c 1 -s 3000 $pod4; ping -c 1 -s 3000 $pod6"
capture port-unreachable in_client python3 -c "
import socket
for fam, addr in ((socket.AF_INET, '$pod4'), (socket.AF_INET6, '$pod6')):
    s = socket.socket(fam, socket.SOCK_DGRAM); s.sendto(b'closed?', (addr, 9)); s.settimeout(1)
    try: s.recv(100)
    except OSError: pass
"
capture neighbours in_client sh -c "ip neigh del 198.18.0.1 dev eth0; ip neigh del fd00::1 dev eth0; ping -c 1 198.18.0.1; ping -c 1 fd00::1"
in_client ip link add vx0 type vxlan id 42 local 198.18.0.2 remote 198.18.0.1 dstport 8472 dev eth0
in_client ip link set vx0 up
in_client ip addr add 198.19.42.2/24 dev vx0
in_client ip neigh replace 198.19.42.1 lladdr 02:00:00:00:42:01 dev vx0 nud permanent
capture vxlan in_client ping -c 2 -W 1 198.19.42.1
ls -l "$here"/*.pcap
