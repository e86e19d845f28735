//! Why a frame was dropped: one enum for the XDP programs, the workers, metrics, flows and the
//! CLI. A drop is never silent; it increments the reason's slot in
//! [`DROP_COUNTS`](crate::maps::DROP_COUNTS).
//!
//! Codes are stable: they sit in counters, ring-buffer events and flow logs that a CLI of
//! another version reads. Never renumber or reuse a code; give a new reason a free code. Codes
//! are grouped in tens by layer so a raw code reads on its own; 0 means "not dropped".

code_enum! {
    /// Why a frame was dropped (its code indexes `DROP_COUNTS`).
    pub enum DropReason: u8, fn from_u8 {
        // Layer 2.
        EthernetTruncated = 1, "ethernet-truncated", "The frame is shorter than an Ethernet header.";
        VlanTruncated = 2, "vlan-truncated", "A VLAN tag is cut short.";
        VlanTooDeep = 3, "vlan-too-deep", "More stacked VLAN tags than the parser follows.";
        UnsupportedEthertype = 4, "unsupported-ethertype",
            "An EtherType the datapath does not handle reached a worker.";
        // IPv4.
        Ipv4Truncated = 10, "ipv4-truncated", "The IPv4 header is cut short.";
        Ipv4BadVersion = 11, "ipv4-bad-version", "An IPv4 EtherType carries another IP version.";
        Ipv4BadHeaderLength = 12, "ipv4-bad-header-length",
            "The IPv4 header length is below 20 bytes or past the frame.";
        Ipv4BadTotalLength = 13, "ipv4-bad-total-length",
            "The IPv4 total length is below the header length or past the frame.";
        Ipv4BadChecksum = 14, "ipv4-bad-checksum", "The IPv4 header checksum is wrong.";
        Ipv4Fragment = 15, "ipv4-fragment", "An IPv4 fragment; fragments are not reassembled.";
        // IPv6.
        Ipv6Truncated = 20, "ipv6-truncated", "The IPv6 header is cut short.";
        Ipv6BadVersion = 21, "ipv6-bad-version", "An IPv6 EtherType carries another IP version.";
        Ipv6BadPayloadLength = 22, "ipv6-bad-payload-length", "The IPv6 payload length runs past the frame.";
        Ipv6ExtHeaderLimit = 23, "ipv6-ext-header-limit",
            "More IPv6 extension headers than the parser follows.";
        Ipv6BadExtHeader = 24, "ipv6-bad-ext-header", "An IPv6 extension header is malformed or cut short.";
        Ipv6Fragment = 25, "ipv6-fragment", "An IPv6 fragment; fragments are not reassembled.";
        // Layer 4.
        TcpTruncated = 30, "tcp-truncated", "The TCP header is cut short.";
        TcpBadDataOffset = 31, "tcp-bad-data-offset",
            "The TCP data offset is below 5 words or past the packet.";
        TcpBadFlags = 32, "tcp-bad-flags", "An invalid TCP flag combination, such as SYN with FIN.";
        UdpTruncated = 33, "udp-truncated", "The UDP header is cut short.";
        UdpBadLength = 34, "udp-bad-length", "The UDP length disagrees with the IP payload length.";
        IcmpTruncated = 35, "icmp-truncated", "The ICMP or ICMPv6 header is cut short.";
        L4BadChecksum = 36, "l4-bad-checksum", "The TCP, UDP or ICMP checksum is wrong.";
        UnknownProtocol = 37, "unknown-protocol", "An IP protocol the datapath does not handle.";
        // Tunnels.
        VxlanTruncated = 40, "vxlan-truncated", "The VXLAN header or the inner frame is cut short.";
        VxlanBadFlags = 41, "vxlan-bad-flags", "The VXLAN header lacks the valid-VNI flag.";
        GeneveTruncated = 42, "geneve-truncated",
            "The Geneve header, its options or the inner frame are cut short.";
        GeneveBadVersion = 43, "geneve-bad-version", "The Geneve version is not 0.";
        GeneveOptionOverflow = 44, "geneve-option-overflow", "A Geneve option runs past the option area.";
        GeneveCriticalOption = 45, "geneve-critical-option",
            "A Geneve option marked critical is not understood.";
        // 46 was unknown-vni: a VNI is now checked as its inner source's identity.
        NoTunnelEndpoint = 47, "no-tunnel-endpoint", "No tunnel endpoint covers the destination pod CIDR.";
        TunnelUnknownNode = 48, "tunnel-unknown-node", "A tunnel frame from an address that is no known node.";
        TunnelOnPodInterface = 49, "tunnel-on-pod-interface",
            "A tunnel frame arrived on a pod's interface instead of the node's uplink.";
        // Prefilter and policy.
        DeniedCidr = 50, "denied-cidr", "The source address is in a denied CIDR (prefilter).";
        PolicyDenied = 51, "policy-denied", "Network policy denies the flow: no rule allows it.";
        PolicyDeniedByDenyRule = 52, "policy-denied-by-deny-rule",
            "A deny rule of a network policy denies the flow (deny rules win over allows).";
        SpoofedSource = 53, "spoofed-source", "A pod sent from an address that is not its own.";
        // Services.
        NoService = 60, "no-service", "Addressed to a service IP on a port with no service.";
        ServiceWithoutBackends = 61, "service-without-backends", "The service has no ready backend.";
        NoBackendMatch = 62, "no-backend-match",
            "The selected Maglev slot names a backend that does not exist.";
        NoLocalBackend = 63, "no-local-backend",
            "A Local traffic policy and no ready backend on this node.";
        // Connection tracking and NAT.
        CtTableFull = 70, "ct-table-full", "The connection-tracking table is full.";
        NatPortExhausted = 71, "nat-port-exhausted", "No free source port is left for SNAT.";
        UnsolicitedIcmpError = 72, "unsolicited-icmp-error", "An ICMP error that matches no tracked flow.";
        // Forwarding.
        TtlExceeded = 80, "ttl-exceeded", "The IPv4 TTL or IPv6 hop limit ran out.";
        Unroutable = 81, "unroutable", "No route or neighbour for the destination.";
        MtuExceeded = 82, "mtu-exceeded", "Too big for the egress MTU and may not be fragmented.";
        NoTxSpace = 83, "no-tx-space", "The transmit ring is full.";
        NoXskSocket = 84, "no-xsk-socket", "No AF_XDP socket is bound to the receive queue.";
        Internal = 85, "internal", "A map or helper call that should not fail did.";
        SlowPathBusy = 86, "slow-path-busy", "The slow path's queue is full; the frame is dropped.";
        HandoffBusy = 87, "handoff-busy", "The queue to the worker owning the flow is full.";
        // Tunnels, continued.
        TunnelNested = 90, "tunnel-nested", "A tunnel frame inside a tunnel frame: never decapsulated twice.";
        TunnelIdentityMismatch = 91, "tunnel-identity-mismatch",
            "A tunnel frame's identity is not the one this node gives its source address.";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed() {
        DropReason::assert_well_formed();
        assert_eq!(DropReason::COUNT, 92);
        assert_eq!(DropReason::SpoofedSource.code(), 53);
        assert_eq!(DropReason::PolicyDeniedByDenyRule.code(), 52);
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(DropReason::from_u8(0), None, "0 means not dropped");
        assert_eq!(DropReason::EthernetTruncated.code(), 1);
        assert_eq!(DropReason::Ipv4BadChecksum.code(), 14);
        assert_eq!(DropReason::Ipv6Fragment.code(), 25);
        assert_eq!(DropReason::L4BadChecksum.code(), 36);
        assert_eq!(DropReason::GeneveCriticalOption.code(), 45);
        assert_eq!(DropReason::DeniedCidr.code(), 50);
        assert_eq!(DropReason::PolicyDenied.code(), 51);
        assert_eq!(DropReason::ServiceWithoutBackends.code(), 61);
        assert_eq!(DropReason::CtTableFull.code(), 70);
        assert_eq!(DropReason::Internal.code(), 85);
    }

    #[test]
    fn display_is_the_name() {
        assert_eq!(DropReason::Ipv4BadChecksum.to_string(), "ipv4-bad-checksum");
        assert_eq!(DropReason::Ipv4BadChecksum.name(), "ipv4-bad-checksum");
        assert_eq!(
            DropReason::DeniedCidr.description(),
            "The source address is in a denied CIDR (prefilter)."
        );
    }
}
