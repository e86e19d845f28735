//! The `skiff` CLI (cilium-dbg style: status, service list, ct list, …); it arrives with skiff-agent.
