//! Network policy enforced, probed as the conformance tools probe it (Cyclonus, the Kubernetes
//! e2e netpol suite): three namespaces x, y, z with pods a, b, c each, made by skiff-cni on
//! a lab node running skiff-agent, serve TCP and UDP on ports 80 and 81; every pod, the node
//! (`host`) and a client outside the cluster (`world`) probe every pod, and every pod probes
//! the world. Each scenario applies its policies (NetworkPolicy, CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy) and compares every cell with its expectation, written by
//! hand from the upstream documentation; the same again with the pods spread over two nodes
//! (VXLAN between them). Then: a connection open before a policy denies it
//! keeps flowing while new ones are refused, and the enforcement modes `always` and
//! `never`. Root only (network namespaces, XDP, AF_XDP).

mod privileged {
    use std::{
        collections::BTreeMap,
        io::{Read, Write},
        net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
        path::Path,
        time::Duration,
    };

    use skiff_api::{EndpointState, Request};
    use skiff_lab::{
        Host, Lab, Netns, Topology,
        cni::{CniAgent, CniNode},
        probe::{self, Probe, Proto, Servers},
    };

    const AGENT: &str = env!("CARGO_BIN_EXE_skiff-agent");

    const CLUSTER: &str = r"
apiVersion: v1
kind: Node
metadata: {name: node1}
spec:
  podCIDRs: [198.18.128.0/24, 'fd00:0:0:128::/64']
status:
  addresses: [{type: InternalIP, address: 198.18.0.1}]
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: 'y', labels: {ns: 'y'}}
---
apiVersion: v1
kind: Namespace
metadata: {name: z, labels: {ns: z}}
";

    const NAMESPACES: [&str; 3] = ["x", "y", "z"];
    const PODS: [&str; 3] = ["a", "b", "c"];
    const PORTS: [u16; 2] = [80, 81];
    /// How long a probe waits: an allowed one answers within a millisecond.
    const DEADLINE: Duration = Duration::from_millis(700);

    /// A scenario: its policies (YAML) and its expectation, hand-written. Each expectation
    /// line is `allow|deny FROM TO PORTS`; the last line that matches a probe decides, and a
    /// probe no line matches is allowed (no policy isolates anyone by default). FROM and TO
    /// are `x/a`, `x/*`, `*/a`, `pods` (any pod), `world`, `host` or `*`; PORTS are `*`,
    /// `tcp/*`, `*/80` or `udp/81`.
    struct Scenario {
        name: &'static str,
        policies: &'static str,
        expect: &'static [&'static str],
    }

    /// What the node may always do (Cilium's allow-localhost) once `TO` is isolated.
    const HOST_X_A: &str = "allow host x/a *";

    const SCENARIOS: &[Scenario] = &[
        Scenario { name: "no policy: everything flows", policies: "", expect: &[] },
        Scenario {
            name: "NetworkPolicy: default deny ingress in x",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-in, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}",
            expect: &["deny * x/* *", "allow host x/* *"],
        },
        Scenario {
            name: "NetworkPolicy: default deny egress in x",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-out, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}",
            expect: &["deny x/* * *"],
        },
        Scenario {
            name: "NetworkPolicy: default deny both ways in x",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}",
            expect: &["deny * x/* *", "deny x/* * *", "allow host x/* *"],
        },
        Scenario {
            name: "NetworkPolicy: x/a from pods labelled pod=b of its namespace",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
            expect: &["deny * x/a *", "allow x/b x/a *", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: x/a from namespace y",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]",
            expect: &["deny * x/a *", "allow y/* x/a *", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: x/a from pod=b in namespace y (both in one peer)",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: b}}}]",
            expect: &["deny * x/a *", "allow y/b x/a *", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: x/a from namespace y or pod=b (two peers)",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}, {podSelector: {matchLabels: {pod: b}}}]",
            expect: &["deny * x/a *", "allow y/* x/a *", "allow x/b x/a *", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: x/a from every namespace (not the world)",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-all-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]",
            expect: &["deny * x/a *", "allow pods x/a *", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: x/a on TCP 80 from anyone",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: tcp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 80}]}]",
            expect: &["deny * x/a *", "allow * x/a tcp/80", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: x/a on UDP 81 from anyone",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: udp-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81, protocol: UDP}]}]",
            expect: &["deny * x/a *", "allow * x/a udp/81", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: a port range (80-81 TCP) from namespace z",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
      ports: [{port: 80, endPort: 81, protocol: TCP}]",
            expect: &["deny * x/a *", "allow z/* x/a tcp/*", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: a named port (serve-81-tcp) of the pod",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-tcp}]}]",
            expect: &["deny * x/a *", "allow * x/a tcp/81", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: egress to the peers' named port serve-80-udp",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: named-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}], ports: [{port: serve-80-udp, protocol: UDP}]}]",
            expect: &["deny x/b * *", "allow x/b pods udp/80"],
        },
        Scenario {
            name: "NetworkPolicy: ipBlock of the world's subnet",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: ipblock, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/24}}]}]",
            expect: &["deny * x/a *", "allow world x/a *", HOST_X_A],
        },
        Scenario {
            // Pod addresses are inside the block too, but CIDR rules do not match pods.
            name: "NetworkPolicy: ipBlock with the world's subnet excepted",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: ipblock-except, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.0/24]}}]}]",
            expect: &["deny * x/a *", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: egress to one address outside the cluster",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: to-client, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 198.18.0.2/32}}]}]",
            expect: &["deny x/* * *", "allow x/* world *"],
        },
        Scenario {
            name: "NetworkPolicy: egress to namespace y on TCP 80",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: to-y-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}], ports: [{port: 80}]}]",
            expect: &["deny x/* * *", "allow x/* y/* tcp/80"],
        },
        Scenario {
            name: "NetworkPolicy: two policies add up",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-y-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: c}}}]}]",
            expect: &["deny * x/a *", "allow x/b x/a *", "allow y/c x/a *", HOST_X_A],
        },
        Scenario {
            name: "NetworkPolicy: policyTypes Ingress leaves its egress rules out",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: ingress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]",
            expect: &["deny * x/a *", "allow x/c x/a *", HOST_X_A],
        },
        Scenario {
            // Without policyTypes, egress rules make it Ingress and Egress: ingress isolated
            // with no rule.
            name: "NetworkPolicy: egress rules without policyTypes isolate ingress too",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: egress-rules, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]",
            expect: &["deny * x/a *", HOST_X_A, "deny x/a * *", "allow x/a x/b *"],
        },
        Scenario {
            name: "NetworkPolicy: an empty ingress rule allows everything",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
            expect: &[],
        },
        Scenario {
            name: "NetworkPolicy: podSelector with In selects y/a and y/b",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: in, namespace: 'y'}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  policyTypes: [Ingress]",
            expect: &["deny * y/a *", "deny * y/b *", "allow host y/a *", "allow host y/b *"],
        },
        Scenario {
            name: "NetworkPolicy: podSelector with NotIn selects z/b and z/c",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: not-in, namespace: z}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}
  policyTypes: [Ingress]",
            expect: &["deny * z/b *", "deny * z/c *", "allow host z/b *", "allow host z/c *"],
        },
        Scenario {
            name: "NetworkPolicy: namespaceSelector with In (x and y into z)",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: ns-in, namespace: z}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [x, 'y']}]}}]}]",
            expect: &["deny * z/* *", "allow x/* z/* *", "allow y/* z/* *", "allow host z/* *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: allow-frontend-to-backend, as Cilium's documentation has it",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-frontend-to-backend, namespace: x}
spec:
  endpointSelector: {matchLabels: {role: backend}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: frontend}}]
      toPorts: [{ports: [{port: '80', protocol: TCP}]}]",
            expect: &["deny * x/b *", "allow x/a x/b tcp/80", "allow host x/b *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: an empty fromEndpoints selector is its namespace",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-ns, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{}]}]",
            expect: &["deny * x/a *", "allow x/* x/a *", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: fromEndpoints naming namespace y (k8s: prefix)",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': 'y'}}]}]",
            expect: &["deny * x/a *", "allow y/* x/a *", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: fromEndpoints by namespace label (ns=z)",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-ns-label, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {'io.cilium.k8s.namespace.labels.ns': z, pod: c}}]}]",
            expect: &["deny * x/a *", "allow z/c x/a *", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: fromEntities world",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-world, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [world]}]",
            expect: &["deny * x/a *", "allow world x/a *", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: fromEntities cluster",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cluster, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [cluster]}]",
            expect: &["deny * x/a *", "allow pods x/a *", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: fromEntities host",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-host, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [host]}]",
            expect: &["deny * x/a *", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: toEntities world",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-world, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEntities: [world]}]",
            expect: &["deny x/a * *", "allow x/a world *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: toEntities cluster",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-cluster, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEntities: [cluster]}]",
            expect: &["deny x/a * *", "allow x/a pods *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: toCIDRSet with the world excepted",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr-set, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toCIDRSet: [{cidr: 198.18.0.0/16, except: [198.18.0.0/28]}]}]",
            expect: &["deny x/a * *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: toCIDR of the client on UDP 81",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr-udp, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toCIDR: [198.18.0.2/32], toPorts: [{ports: [{port: '81', protocol: UDP}]}]}]",
            expect: &["deny x/a * *", "allow x/a world udp/81"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: toPorts ANY on 81 (TCP and UDP)",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any-81, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{}], toPorts: [{ports: [{port: '81', protocol: ANY}]}]}]",
            expect: &["deny * x/a *", "allow x/* x/a */81", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: a port range with endPort from entity all",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: range, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [all], toPorts: [{ports: [{port: '80', endPort: 81, protocol: TCP}]}]}]",
            expect: &["deny * x/a *", "allow * x/a tcp/*", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: ingressDeny wins over an allow of all",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [all]}]
  ingressDeny: [{fromEndpoints: [{matchLabels: {pod: b}}]}]",
            expect: &["deny x/b x/a *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: a deny-only policy isolates too",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-only, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': 'y'}}]}]",
            expect: &["deny * x/a *", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: enableDefaultDeny false only denies what it denies",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-y-only, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  enableDefaultDeny: {ingress: false}
  ingressDeny: [{fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': 'y'}}]}]",
            expect: &["deny y/* x/a *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: egressDeny of UDP 80 beside an allow of all",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-udp-80, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEntities: [all]}]
  egressDeny: [{toEntities: [all], toPorts: [{ports: [{port: '80', protocol: UDP}]}]}]",
            expect: &["deny x/a * udp/80"],
        },
        Scenario {
            name: "CiliumClusterwideNetworkPolicy: pod=a in every namespace from pod=c anywhere",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: c-to-a}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {pod: c}}]}]",
            expect: &["deny * */a *", "allow */c */a *", "allow host */a *"],
        },
        Scenario {
            name: "CiliumClusterwideNetworkPolicy: an empty fromEndpoints selector is every pod",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: z-from-pods}
spec:
  endpointSelector: {matchLabels: {'k8s:io.kubernetes.pod.namespace': z}}
  ingress: [{fromEndpoints: [{}]}]",
            expect: &["deny * z/* *", "allow pods z/* *", "allow host z/* *"],
        },
        Scenario {
            name: "CiliumNetworkPolicy: L7 rules are not enforced: their port is denied",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress:
    - fromEndpoints: [{}]
      toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]
    - fromEndpoints: [{}]
      toPorts: [{ports: [{port: '81', protocol: TCP}]}]",
            expect: &["deny * x/a *", "allow x/* x/a tcp/81", HOST_X_A],
        },
        Scenario {
            name: "CiliumNetworkPolicy: toFQDNs is not enforced: it allows nothing",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  egress:
    - toFQDNs: [{matchName: example.com}]
    - toEntities: [world]
      toPorts: [{ports: [{port: '81', protocol: TCP}]}]",
            expect: &["deny x/a * *", "allow x/a world tcp/81"],
        },
        Scenario {
            name: "CiliumClusterwideNetworkPolicy: a host policy is accepted, not enforced",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {}
  ingress: [{fromEntities: [cluster]}]",
            expect: &[],
        },
        Scenario {
            name: "CiliumNetworkPolicy: a list of specs",
            policies: "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: two-specs, namespace: x}
specs:
  - endpointSelector: {matchLabels: {pod: a}}
    ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]
  - endpointSelector: {matchLabels: {pod: c}}
    ingress: [{}]",
            expect: &["deny * x/a *", "allow x/b x/a *", HOST_X_A, "deny * x/c *", "allow host x/c *"],
        },
        Scenario {
            name: "NetworkPolicy and CiliumNetworkPolicy on one pod add up",
            policies: "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-b, namespace: 'y'}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-world-udp, namespace: 'y'}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [world], toPorts: [{ports: [{port: '80', protocol: UDP}]}]}]",
            expect: &["deny * y/a *", "allow y/b y/a *", "allow world y/a udp/80", "allow host y/a *"],
        },
    ];

    /// The lab: the node with its agent (and, across nodes, the other node's), the pods by
    /// `ns/name` with the namespace of their node, the world, and the servers.
    struct Matrix {
        node: CniNode,
        others: Vec<CniAgent>,
        pods: BTreeMap<String, (Host, Netns)>,
        world: Host,
        _servers: Servers,
    }

    /// A probe's two ends and port, by name (`x/a`, `world`, `host`).
    type Cell = (String, String, Proto, u16);

    impl Matrix {
        /// The lab, the agent serving it with `io` (`afxdp` or `afpacket`).
        fn start(io: &str) -> Matrix {
            let lab = Topology::new().cni_pods(9).build().unwrap();
            let node = CniNode::start(lab, Path::new(AGENT), &format!("policy-{io}"), io, &[], CLUSTER);
            // The world reaches the pods through the node.
            Matrix::with_pods(node, Vec::new(), &[("198.18.128.0/24", "198.18.0.1")])
        }

        /// Two nodes on a switch, each running skiff-agent (AF_XDP, VXLAN between them) on
        /// the same objects, the pods alternating between them.
        fn start_two_nodes() -> Matrix {
            let lab = Topology::new().cluster(2).cni_pods(9).build().unwrap();
            let cluster = two_nodes_yaml(&lab);
            let node2 = lab.nodes()[1].netns.clone();
            let node = CniNode::start(lab, Path::new(AGENT), "policy-2n-1", "afxdp", &[], &cluster);
            let name = format!("policy-2n-2-{}", node.lab.id());
            let other =
                CniAgent::start(&node2, Path::new(AGENT), &name, "node2", "uplink", "afxdp", &[], &cluster);
            // The world reaches each node's pods through that node.
            let routes = [("198.18.10.0/24", "198.18.0.1"), ("198.18.11.0/24", "198.18.0.3")];
            Matrix::with_pods(node, vec![other], &routes)
        }

        /// The pods made by the agents (in turn), labelled in every agent's objects and
        /// ready, the world's `routes` (prefix, via), and the servers.
        fn with_pods(mut node: CniNode, mut others: Vec<CniAgent>, routes: &[(&str, &str)]) -> Matrix {
            let netns: Vec<Netns> = node.lab.cni_pods().to_vec();
            let (mut pods, mut objects) = (BTreeMap::new(), String::new());
            let mut per_agent = vec![0; 1 + others.len()];
            for (i, (ns, pod)) in
                NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| (ns, p))).enumerate()
            {
                let k = i % per_agent.len();
                let agent: &CniAgent = if k == 0 { &node } else { &others[k - 1] };
                let host = agent.pod(&format!("{ns}-{pod}"), &netns[i], ns, pod);
                objects += &pod_yaml(ns, pod, &host, k + 1);
                pods.insert(format!("{ns}/{pod}"), (host, agent.node.clone()));
                per_agent[k] += 1;
            }
            for (agent, n) in std::iter::once(&mut *node).chain(&mut others).zip(per_agent) {
                std::fs::write(agent.objects().join("pods.yaml"), &objects).unwrap();
                let ready = |e: Vec<skiff_api::EndpointView>| {
                    e.len() == n && e.iter().all(|e| e.state == EndpointState::Ready)
                };
                agent
                    .agent
                    .wait_until("labelled endpoints", |a| a.client().endpoints().is_ok_and(ready))
                    .unwrap();
            }
            let world = node.lab.client().clone();
            for (prefix, via) in routes {
                world.netns.exec("ip", &["route", "replace", prefix, "via", via]).unwrap();
            }
            let mut hosts: Vec<&Netns> = pods.values().map(|(h, _)| &h.netns).collect();
            hosts.push(&world.netns);
            let servers = Servers::start(&hosts, &PORTS).unwrap();
            Matrix { node, others, pods, world, _servers: servers }
        }

        /// Applies `policies` and waits until the agent has compiled (and so published)
        /// exactly them.
        fn apply(&mut self, policies: &str) {
            let names: Vec<&str> = policies
                .split("metadata: {name: ")
                .skip(1)
                .filter_map(|rest| rest.split([',', '}']).next())
                .collect();
            for agent in std::iter::once(&*self.node).chain(&self.others) {
                let path = agent.objects().join("policies.yaml");
                if policies.is_empty() {
                    let _ = std::fs::remove_file(&path);
                } else {
                    std::fs::write(&path, policies).unwrap();
                }
            }
            let applied = |a: &skiff_lab::agent::Agent| {
                let Ok(p) = a.client().policy() else { return false };
                // `Kind ns/name` or `Kind name`, and `specs[i]` after it.
                let is = |s: &String, n: &str| s.split([' ', '/']).any(|w| w == n);
                p.policies.iter().all(|s| names.iter().any(|n| is(s, n)))
                    && names.iter().all(|n| p.policies.iter().any(|s| is(s, n)))
            };
            for agent in std::iter::once(&mut *self.node).chain(&mut self.others) {
                agent
                    .agent
                    .wait_until("the policies", applied)
                    .unwrap_or_else(|e| panic!("{e}: {:#?}", agent.agent.status()));
                let status = agent.agent.status().unwrap();
                assert!(status.rejections.is_empty(), "rejected: {:#?}", status.rejections);
            }
        }

        /// Every cell probed: pods, the node and the world to every pod, pods to the world.
        /// `host` is the pod's own node.
        fn probe(&self) -> BTreeMap<Cell, bool> {
            let mut ends: Vec<(String, Netns, Option<IpAddr>)> = self
                .pods
                .iter()
                .map(|(n, (h, _))| (n.clone(), h.netns.clone(), Some(h.ipv4.into())))
                .collect();
            ends.push(("world".into(), self.world.netns.clone(), Some(self.world.ipv4.into())));
            // The node's netns is each target's own (below).
            ends.push(("host".into(), self.node.lab.node().netns.clone(), None));
            let mut cells = Vec::new();
            let mut probes = Vec::new();
            for (from, netns, _) in &ends {
                for (to, _, addr) in &ends {
                    let Some(addr) = addr else { continue };
                    let pod_involved = from.contains('/') || to.contains('/');
                    if from == to || !pod_involved || (from == "host" && !to.contains('/')) {
                        continue;
                    }
                    let netns = match self.pods.get(to) {
                        Some((_, node)) if from == "host" => node,
                        _ => netns,
                    };
                    for proto in [Proto::Tcp, Proto::Udp] {
                        for port in PORTS {
                            cells.push((from.clone(), to.clone(), proto, port));
                            probes.push(Probe { from: netns.clone(), to: *addr, proto, port });
                        }
                    }
                }
            }
            let results = probe::run(&probes, DEADLINE).unwrap();
            cells.into_iter().zip(results).collect()
        }
    }

    /// The two nodes of the matrix across nodes (the lab's pod CIDRs), and the namespaces.
    fn two_nodes_yaml(lab: &Lab) -> String {
        let nodes: String = lab
            .nodes()
            .iter()
            .map(|n| {
                format!(
                    "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
                     spec: {{podCIDRs: [198.18.{net}.0/24, 'fd00:0:0:{net}::/64']}}\n\
                     status: {{addresses: [{{type: InternalIP, address: {v4}}}]}}\n",
                    name = n.name,
                    net = n.pod_net,
                    v4 = n.ipv4,
                )
            })
            .collect();
        let namespaces = CLUSTER.split_once("---").map_or("", |(_, rest)| rest);
        format!("{nodes}---{namespaces}")
    }

    /// A Pod of the matrix: labels `pod`, `role` (a is a frontend, b a backend), its named
    /// ports, node `node<k>`, its addresses.
    fn pod_yaml(ns: &str, pod: &str, host: &Host, k: usize) -> String {
        let role = match pod {
            "a" => "frontend",
            "b" => "backend",
            _ => "none",
        };
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: '{ns}', labels: {{pod: {pod}, role: {role}}}}}\n\
             spec:\n  nodeName: node{k}\n  containers:\n    - name: serve\n      image: skiff/probe\n      ports:\n\
             \x20       - {{name: serve-80-tcp, containerPort: 80}}\n        - {{name: serve-81-tcp, containerPort: 81}}\n\
             \x20       - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n        - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n\
             status:\n  podIP: {v4}\n  podIPs: [{{ip: {v4}}}, {{ip: '{v6}'}}]\n",
            v4 = host.ipv4,
            v6 = host.ipv6,
        )
    }

    /// Whether `pattern` (`x/a`, `x/*`, `*/a`, `pods`, `world`, `host`, `*`) names `end`.
    fn names(pattern: &str, end: &str) -> bool {
        match (pattern, end.split_once('/')) {
            ("*", _) => true,
            ("pods", Some(_)) => true,
            (p, Some((ns, pod))) => match p.split_once('/') {
                Some((pns, ppod)) => (pns == "*" || pns == ns) && (ppod == "*" || ppod == pod),
                None => false,
            },
            (p, None) => p == end,
        }
    }

    /// The hand-written verdict of `expect` for one cell.
    fn expected(expect: &[&str], (from, to, proto, port): &Cell) -> bool {
        let mut allowed = true;
        for line in expect {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [verdict, src, dst, ports] = words[..] else { panic!("bad expectation {line:?}") };
            let (p, n) = ports.split_once('/').unwrap_or((ports, "*"));
            let proto_ok = match p {
                "*" => true,
                "tcp" => *proto == Proto::Tcp,
                "udp" => *proto == Proto::Udp,
                _ => panic!("bad ports in {line:?}"),
            };
            if names(src, from) && names(dst, to) && proto_ok && (n == "*" || n == port.to_string()) {
                allowed = verdict == "allow";
            }
        }
        allowed
    }

    /// The cells where the probes disagree with the expectation, one line each.
    fn mismatches(expect: &[&str], results: &BTreeMap<Cell, bool>) -> Vec<String> {
        results
            .iter()
            .filter(|(cell, got)| expected(expect, cell) != **got)
            .map(|((from, to, proto, port), got)| {
                let got = if *got { "got through" } else { "was blocked" };
                format!("{from} -> {to} {proto:?}/{port} {got}")
            })
            .collect()
    }

    /// Every scenario over AF_XDP; then a connection under a new deny, a spoofed source, and
    /// the enforcement modes.
    #[test]
    fn the_probe_matrix_matches_every_scenario() {
        let mut m = Matrix::start("afxdp");
        let (scenarios, cells) = run_scenarios(&mut m, SCENARIOS.iter());
        println!("{scenarios} scenarios, {cells} probes");
        assert!(scenarios >= 40);
        an_open_connection_outlives_a_policy_that_denies_it(&mut m);
        a_pod_cannot_send_as_another(&mut m, false);
        the_prefilter_drops_a_source(&mut m, true);
        enforcement_modes(&mut m);
    }

    /// Across two nodes (VXLAN between them): every scenario, with the pods spread over both;
    /// `host` is each pod's own node.
    #[test]
    fn the_probe_matrix_holds_across_two_nodes() {
        let mut m = Matrix::start_two_nodes();
        let (scenarios, cells) = run_scenarios(&mut m, SCENARIOS.iter());
        println!("{scenarios} scenarios, {cells} probes across two nodes");
        assert!(scenarios >= 40);
        for agent in std::iter::once(&*m.node).chain(&m.others) {
            let status = agent.agent.status().unwrap();
            assert_eq!(
                status.tunnels.len(),
                2,
                "a tunnel to the other node's pod CIDRs: {:?}",
                status.tunnels
            );
            let workers = status.workers.unwrap();
            assert!(workers.received > 1000, "the pods' traffic went through the workers: {workers:?}");
        }
    }

    /// Over AF_PACKET (the workers see a copy of every frame, nftables keeps the kernel's
    /// from going on): every third scenario, and a spoofed source.
    #[test]
    fn the_probe_matrix_holds_over_af_packet() {
        let mut m = Matrix::start("afpacket");
        let (scenarios, cells) = run_scenarios(&mut m, SCENARIOS.iter().step_by(3));
        println!("{scenarios} scenarios, {cells} probes over AF_PACKET");
        a_pod_cannot_send_as_another(&mut m, true);
        the_prefilter_drops_a_source(&mut m, false);
    }

    /// Applies and probes each scenario; panics listing every cell that differs from its
    /// expectation. How many scenarios and probes ran.
    fn run_scenarios<'a>(m: &mut Matrix, scenarios: impl Iterator<Item = &'a Scenario>) -> (usize, usize) {
        let (mut failures, mut cells, mut count) = (Vec::new(), 0, 0);
        for scenario in scenarios {
            count += 1;
            println!("{}", scenario.name);
            m.apply(scenario.policies);
            let results = m.probe();
            cells += results.len();
            let wrong = mismatches(scenario.expect, &results);
            if !wrong.is_empty() {
                failures.push(format!(
                    "{}: {} cells wrong:\n    {}",
                    scenario.name,
                    wrong.len(),
                    wrong.join("\n    ")
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        (count, cells)
    }

    const ONLY_X_A_TO_Y_A: &str = "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: only-x-a, namespace: 'y'}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]";

    /// y/a admits only x/a. x/b, sending with x/a's address (added to its interface), gets
    /// nothing through: its frames are dropped at its veth (`spoofed-source`), while x/a's
    /// own get through.
    fn a_pod_cannot_send_as_another(m: &mut Matrix, counted: bool) {
        m.apply(ONLY_X_A_TO_Y_A);
        let (x_a, x_b, y_a) = (m.pods["x/a"].0.clone(), m.pods["x/b"].0.clone(), m.pods["y/a"].0.clone());
        let to = SocketAddr::from((y_a.ipv4, 9999));
        let server = y_a.netns.run(|| UdpSocket::bind(to)).unwrap().unwrap();
        server.set_read_timeout(Some(DEADLINE)).unwrap();
        let send_from = |netns: &Netns| {
            let from = SocketAddr::from((x_a.ipv4, 0));
            netns.run(|| UdpSocket::bind(from).and_then(|s| s.send_to(b"who", to))).unwrap().unwrap();
            let mut buf = [0u8; 8];
            server.recv_from(&mut buf).is_ok()
        };
        assert!(send_from(&x_a.netns), "x/a's own datagram arrives");
        let spoof = format!("{}/32", x_a.ipv4);
        x_b.netns.exec("ip", &["addr", "add", &spoof, "dev", "eth0"]).unwrap();
        let arrived = send_from(&x_b.netns);
        x_b.netns.exec("ip", &["addr", "del", &spoof, "dev", "eth0"]).unwrap();
        assert!(!arrived, "x/b sending as x/a is dropped");
        if counted {
            let drops = m.node.agent.status().unwrap().workers.unwrap().drops;
            assert!(drops.get(&skiff_common::DropReason::SpoofedSource).is_some_and(|&n| n > 0), "{drops:?}");
        }
        m.apply("");
    }

    const DENY_X: &str = "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-in, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}";

    const ALLOW_Y_TO_X: &str = "
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]}]";

    /// As Cilium: a connection allowed when it opened keeps its conntrack entry, and so its
    /// verdict, until it ends; new connections get the new verdict at once. (A connection
    /// opened before its pod came under any policy was the kernel's, never tracked by a
    /// worker: it is judged like a new one once the pod is.)
    fn an_open_connection_outlives_a_policy_that_denies_it(m: &mut Matrix) {
        m.apply(ALLOW_Y_TO_X);
        let client = m.pods["y/a"].0.netns.clone();
        let to = SocketAddr::from((m.pods["x/a"].0.ipv4, 80));
        let mut open = client.run(|| TcpStream::connect_timeout(&to, DEADLINE)).unwrap().expect("allowed");
        open.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let echo = |s: &mut TcpStream, text: &[u8]| {
            s.write_all(text).unwrap();
            let mut buf = vec![0; text.len()];
            s.read_exact(&mut buf).map(|()| buf == text).unwrap_or(false)
        };
        assert!(echo(&mut open, b"before"), "the connection works");
        m.apply(DENY_X);
        for i in 0..20 {
            assert!(
                echo(&mut open, format!("under the deny {i}").as_bytes()),
                "the open connection keeps flowing"
            );
        }
        let new = client.run(|| TcpStream::connect_timeout(&to, DEADLINE)).unwrap();
        assert!(new.is_err(), "a new connection is denied at once");
        m.apply("");
        let new = client.run(|| TcpStream::connect_timeout(&to, DEADLINE)).unwrap();
        assert!(new.is_ok(), "allowed again once the policy goes");
        let drops = m.node.agent.status().unwrap().workers.unwrap().drops;
        assert!(
            drops.get(&skiff_common::DropReason::PolicyDenied).is_some_and(|&n| n > 0),
            "counted: {drops:?}"
        );
    }

    /// `skiff prefilter update` drops the world's client at the NIC, whatever policy says (with
    /// `restart`: also after the agent restarts, the prefix kept in its data folder); `delete`
    /// lets it in again.
    fn the_prefilter_drops_a_source(m: &mut Matrix, restart: bool) {
        let world: ipnet::IpNet = "198.18.0.2/32".parse().unwrap();
        let client = m.node.agent.client();
        let view = client.prefilter(&Request::PrefilterUpdate { cidrs: vec![world] }).unwrap();
        assert_eq!(view.cidrs, [(world, 1)]);
        let from_world = |m: &Matrix| {
            let probes: Vec<Probe> = ["x/a", "y/b", "z/c"]
                .iter()
                .map(|p| Probe {
                    from: m.world.netns.clone(),
                    to: m.pods[*p].0.ipv4.into(),
                    proto: Proto::Tcp,
                    port: 80,
                })
                .collect();
            probe::run(&probes, DEADLINE).unwrap()
        };
        assert_eq!(from_world(m), [false; 3], "the world is dropped at the NIC");
        if restart {
            restart_agent(m, &[]);
            assert_eq!(m.node.agent.status().unwrap().prefilter, 1, "kept across the restart");
            assert_eq!(from_world(m), [false; 3], "still dropped after the restart");
        }
        let view = m.node.agent.client().prefilter(&Request::PrefilterDelete { cidrs: vec![world] }).unwrap();
        assert!(view.cidrs.is_empty());
        assert_eq!(from_world(m), [true; 3], "the world gets in again");
    }

    /// Restarts the agent with its arguments and `extra`; waits for its 9 endpoints.
    fn restart_agent(m: &mut Matrix, extra: &[&str]) {
        m.node.agent.kill().unwrap();
        let mut args = m.node.args.clone();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let node = m.node.lab.node().netns.clone();
        m.node.agent.restart(&node, Path::new(AGENT), &args).unwrap();
        let ready = |e: Vec<skiff_api::EndpointView>| {
            e.len() == 9 && e.iter().all(|e| e.state == EndpointState::Ready)
        };
        m.node.agent.wait_until("the endpoints again", |a| a.client().endpoints().is_ok_and(ready)).unwrap();
    }

    /// The agent restarted with `--policy-enforcement always`: with no policy at all every pod
    /// is isolated both ways (the node still reaches them); with `never`, a deny-all policy
    /// denies nothing, and status says it is not enforced.
    fn enforcement_modes(m: &mut Matrix) {
        restart_agent(m, &["--policy-enforcement", "always"]);
        m.apply("");
        let status = m.node.agent.status().unwrap();
        assert_eq!((status.policy_enforcement.as_str(), status.enforced), ("always", (9, 9)));
        let wrong = mismatches(&["deny * * *", "allow host pods *"], &m.probe());
        assert!(wrong.is_empty(), "always: {} cells wrong:\n{}", wrong.len(), wrong.join("\n"));
        restart_agent(m, &["--policy-enforcement", "never"]);
        m.apply(DENY_X);
        let wrong = mismatches(&[], &m.probe());
        assert!(wrong.is_empty(), "never: {} cells wrong:\n{}", wrong.len(), wrong.join("\n"));
        let health = m.node.agent.status().unwrap().health.to_string();
        assert!(health.contains("policy enforcement is off"), "{health}");
    }
}
