//! The ADD result in the format of the requested version: 1.x as the spec writes it, 0.3 and
//! 0.4 with each address's `version`; an MTU on the interfaces from 1.1. A `prevResult` (skiff
//! chained after another plugin) is kept, and skiff's interfaces and addresses added to it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

/// An interface the attachment made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: [u8; 6],
    /// The container's namespace (`CNI_NETNS`); `None` on the host.
    pub sandbox: Option<String>,
}

/// What an ADD made.
#[derive(Clone, Debug)]
pub struct Made {
    pub host: Interface,
    pub pod: Interface,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
}

pub fn mac_text(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The ADD result for `version`, on top of `prev` if there is one.
pub fn add_result(version: &str, prev: Option<&Value>, made: &Made) -> Value {
    let mut interfaces: Vec<Value> = list(prev, "interfaces");
    let mut ips: Vec<Value> = list(prev, "ips");
    let mut routes: Vec<Value> = list(prev, "routes");
    let first = interfaces.len();
    let with_mtu = version.starts_with("1.1");
    for iface in [&made.host, &made.pod] {
        let mut v = json!({ "name": iface.name, "mac": mac_text(iface.mac) });
        if let Some(sandbox) = &iface.sandbox {
            v["sandbox"] = json!(sandbox);
        }
        if with_mtu {
            v["mtu"] = json!(made.mtu);
        }
        interfaces.push(v);
    }
    let legacy = version.starts_with("0.");
    for address in &made.addresses {
        let gateway = made.gateways.iter().find(|g| g.is_ipv4() == address.addr().is_ipv4());
        let mut ip = json!({ "address": address.to_string(), "interface": first + 1 });
        if let Some(gateway) = gateway {
            ip["gateway"] = json!(gateway.to_string());
            let default = if gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            routes.push(json!({ "dst": default, "gw": gateway.to_string() }));
        }
        if legacy {
            ip["version"] = json!(if address.addr().is_ipv4() { "4" } else { "6" });
        }
        ips.push(ip);
    }
    let dns = prev.and_then(|p| p.get("dns")).cloned().unwrap_or_else(|| json!({}));
    json!({ "cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns })
}

fn list(prev: Option<&Value>, key: &str) -> Vec<Value> {
    prev.and_then(|p| p.get(key)).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The addresses a result (a `prevResult`) gives the interface named `ifname` in `sandbox`.
pub fn addresses_of(result: &Value, ifname: &str, sandbox: &str) -> Vec<IpNet> {
    let interfaces = list(Some(result), "interfaces");
    let ours = |i: &Value| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox").and_then(Value::as_str) == Some(sandbox)
    };
    list(Some(result), "ips")
        .iter()
        .filter(|ip| {
            let index = ip.get("interface").and_then(Value::as_u64);
            index.and_then(|i| interfaces.get(usize::try_from(i).ok()?)).is_some_and(ours)
        })
        .filter_map(|ip| ip.get("address")?.as_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made() -> Made {
        Made {
            host: Interface { name: "lxc0123456789ab".into(), mac: [2, 0, 0, 0, 0, 1], sandbox: None },
            pod: Interface {
                name: "eth0".into(),
                mac: [2, 0, 0, 0, 0, 2],
                sandbox: Some("/run/netns/p".into()),
            },
            mtu: 1500,
            addresses: vec!["198.18.128.2/32".parse().unwrap(), "fd00:0:0:128::2/128".parse().unwrap()],
            gateways: vec!["198.18.128.1".parse().unwrap(), "fd00:0:0:128::1".parse().unwrap()],
        }
    }

    #[test]
    fn a_1_0_result_as_the_spec_writes_it() {
        let r = add_result("1.0.0", None, &made());
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "lxc0123456789ab", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p"}
                ],
                "ips": [
                    {"address": "198.18.128.2/32", "gateway": "198.18.128.1", "interface": 1},
                    {"address": "fd00:0:0:128::2/128", "gateway": "fd00:0:0:128::1", "interface": 1}
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "198.18.128.1"}, {"dst": "::/0", "gw": "fd00:0:0:128::1"}],
                "dns": {}
            })
        );
        assert_eq!(addresses_of(&r, "eth0", "/run/netns/p"), made().addresses);
    }

    #[test]
    fn older_versions_say_each_address_family_and_1_1_gives_the_mtu() {
        let r = add_result("0.3.1", None, &made());
        assert_eq!(
            (r["ips"][0]["version"].as_str(), r["ips"][1]["version"].as_str()),
            (Some("4"), Some("6"))
        );
        assert_eq!(add_result("1.1.0", None, &made())["interfaces"][1]["mtu"], json!(1500));
        assert!(add_result("1.0.0", None, &made())["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn a_previous_result_is_kept_and_extended() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "dummy0", "mac": "02:00:00:00:00:09"}],
            "ips": [{"address": "198.19.0.5/24", "interface": 0}],
            "dns": {"nameservers": ["198.19.0.53"]}
        });
        let r = add_result("1.0.0", Some(&prev), &made());
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(
            (r["ips"][0]["interface"].as_u64(), r["ips"][1]["interface"].as_u64()),
            (Some(0), Some(2))
        );
        assert_eq!(r["dns"], prev["dns"]);
    }
}
