//! `skiff-cni`, the CNI plugin (specification 0.3.0 to 1.1.0) that gives a pod its network
//! from skiff-agent: the plugin's side of what [`crate::endpoints`] is the agent's. ADD asks the agent for addresses, makes the veth pair, addresses and
//! routes the pod, then registers the endpoint, which the agent starts serving; any failure
//! undoes what was made. DEL unregisters and deletes, and succeeds when there is nothing
//! left. CHECK compares what is there with the agent and the previous result; GC lets the
//! agent drop attachments the runtime no longer has; STATUS says whether the agent can serve
//! an ADD.

pub mod config;
pub mod error;
pub mod link;
pub mod result;

use std::{io::Read, path::Path, process::ExitCode};

use serde_json::{Value, json};
use skiff_api::{Attachment, Client, EndpointSpec};

use self::{
    config::{Command, Invocation, NetConf, SUPPORTED},
    error::{CniError, code},
    link::{Netlink, host_ifname, open_netns},
    result::{Made, add_result, addresses_of},
};

/// The plugin: reads the invocation, runs it, prints the result or the error.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let invocation = match read {
        Ok(_) => config::parse(|k| std::env::var(k).ok(), &stdin),
        Err(e) => Err((
            config::LATEST.to_owned(),
            CniError::new(code::IO_FAILURE, "cannot read the network configuration", e.to_string()),
        )),
    };
    let outcome = invocation.and_then(|inv| {
        let version = inv.version.clone();
        run(inv).map_err(|e| (version, e))
    });
    match outcome {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err((version, e)) => {
            let mut error = serde_json::to_value(&e).unwrap_or_else(|_| json!({}));
            error["cniVersion"] = json!(version);
            println!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn run(inv: Invocation) -> Result<Option<Value>, CniError> {
    let Some(conf) = &inv.conf else {
        return Ok(Some(json!({ "cniVersion": inv.version, "supportedVersions": SUPPORTED })));
    };
    let client = Client::new(&conf.socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot start", e.to_string()))?;
    match inv.command {
        Command::Add => runtime.block_on(add(&inv, conf, &client)).map(Some),
        Command::Del => runtime.block_on(del(&inv, &client)).map(|()| None),
        Command::Check => runtime.block_on(check(&inv, conf, &client)).map(|()| None),
        Command::Gc => runtime.block_on(gc(conf, &client)).map(|()| None),
        Command::Status => client.cni_status().map(|()| None).map_err(|e| {
            let e = CniError::from(e);
            CniError::new(code::NOT_AVAILABLE, &e.msg, e.details)
        }),
        Command::Version => unreachable!("VERSION has no network configuration"),
    }
}

fn io_failure(msg: &str) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |e| CniError::new(code::INTERFACE_FAILED, msg, e.to_string())
}

/// The namespace `CNI_NETNS` names, and its path.
fn netns_of(inv: &Invocation) -> Result<(std::fs::File, &Path), CniError> {
    let path = inv.env.netns.as_deref().expect("ADD and CHECK have CNI_NETNS");
    let file = open_netns(path).map_err(|e| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "the container's network namespace does not exist",
            format!("CNI_NETNS={}: {e}", path.display()),
        )
    })?;
    Ok((file, path))
}

async fn add(inv: &Invocation, conf: &NetConf, client: &Client) -> Result<Value, CniError> {
    let (netns, netns_path) = netns_of(inv)?;
    let attachment = inv.env.attachment();
    let host = Netlink::here().map_err(io_failure("cannot open rtnetlink"))?;
    let pod = Netlink::inside(&netns).map_err(io_failure("cannot enter the container's namespace"))?;
    // Before anything is made: a second ADD must not disturb the first one's interface.
    if pod.link(&attachment.ifname).await.map_err(io_failure("cannot read the container's links"))?.is_some()
    {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            "the interface already exists in the container",
            format!(
                "{} exists in {}: DEL the attachment {attachment} first",
                attachment.ifname,
                netns_path.display()
            ),
        ));
    }
    let addressing = client.allocate(&attachment, inv.env.pod.as_ref())?;
    let host_name = host_ifname(&attachment);
    let made = async {
        // A host side left by an ADD that died half-way.
        host.delete(&host_name).await?;
        host.add_veth(&host_name, &attachment.ifname, &netns, addressing.mtu, u32::from(addressing.queues))
            .await?;
        let missing =
            |side: &str| std::io::Error::other(format!("the new {side} side of the veth pair is missing"));
        let host_link = host.link(&host_name).await?.ok_or_else(|| missing("host"))?;
        let pod_link = pod.link(&attachment.ifname).await?.ok_or_else(|| missing("container"))?;
        pod.set_up(pod_link.index).await?;
        for &address in &addressing.addresses {
            pod.add_address(pod_link.index, address).await?;
            host.route_to(host_link.index, address).await?;
            host.neighbour(host_link.index, address.addr(), pod_link.mac).await?;
        }
        for &gateway in &addressing.gateways {
            pod.route_to(pod_link.index, gateway.into()).await?;
            pod.neighbour(pod_link.index, gateway, host_link.mac).await?;
            pod.default_via(pod_link.index, gateway).await?;
        }
        host.tx_checksum_off(&host_name)?;
        pod.tx_checksum_off(&attachment.ifname)?;
        pod.gro_on(&attachment.ifname)?;
        Ok::<_, std::io::Error>(Made {
            host: host_link.interface(&host_name, None),
            pod: pod_link.interface(&attachment.ifname, Some(netns_path)),
            mtu: addressing.mtu,
            addresses: addressing.addresses.clone(),
            gateways: addressing.gateways.clone(),
        })
    }
    .await
    .map_err(io_failure("cannot make the pod's interfaces"));
    let registered = made.and_then(|made| {
        let spec = EndpointSpec {
            attachment: attachment.clone(),
            pod: inv.env.pod.clone(),
            netns: netns_path.to_owned(),
            host_ifname: host_name.clone(),
            addresses: addressing.addresses.iter().map(ipnet::IpNet::addr).collect(),
        };
        client.create_endpoint(&spec)?;
        Ok(made)
    });
    match registered {
        Ok(made) => Ok(add_result(&inv.version, conf.prev_result.as_ref(), &made)),
        Err(e) => {
            // Nothing half-made stays: the veth (its peer goes with it), the endpoint and the
            // addresses. What cannot be undone is said in the error.
            let mut details = e.details.clone();
            if let Err(undo) = host.delete(&host_name).await {
                details += &format!("; and removing {host_name} failed: {undo}");
            }
            if let Err(undo) = client.delete_endpoint(&attachment) {
                details += &format!("; and releasing the addresses failed: {undo}");
            }
            Err(CniError { details, ..e })
        }
    }
}

async fn del(inv: &Invocation, client: &Client) -> Result<(), CniError> {
    let attachment = inv.env.attachment();
    // The agent first: it stops serving the interface before it goes. An agent that cannot be
    // reached is "try again later": the addresses it holds must still be released.
    client.delete_endpoint(&attachment)?;
    let host = Netlink::here().map_err(io_failure("cannot open rtnetlink"))?;
    host.delete(&host_ifname(&attachment)).await.map_err(io_failure("cannot delete the pod's veth"))?;
    Ok(())
}

async fn check(inv: &Invocation, conf: &NetConf, client: &Client) -> Result<(), CniError> {
    let (netns, netns_path) = netns_of(inv)?;
    let attachment = inv.env.attachment();
    let endpoint = client.check_endpoint(&attachment)?;
    let wrong =
        |details: String| CniError::new(code::CHECK_FAILED, "the attachment is not as it was made", details);
    let host = Netlink::here().map_err(io_failure("cannot open rtnetlink"))?;
    if host.link(&endpoint.host_ifname).await.map_err(io_failure("cannot read links"))?.is_none() {
        return Err(wrong(format!("the host side {} is missing", endpoint.host_ifname)));
    }
    let pod = Netlink::inside(&netns).map_err(io_failure("cannot enter the container's namespace"))?;
    let link = pod.link(&attachment.ifname).await.map_err(io_failure("cannot read the container's links"))?;
    let Some(link) = link.filter(|l| l.up) else {
        return Err(wrong(format!("{} is missing or down in {}", attachment.ifname, netns_path.display())));
    };
    let has = pod.addresses(link.index).await.map_err(io_failure("cannot read the container's addresses"))?;
    let mut expected: Vec<ipnet::IpNet> = endpoint.addresses.iter().map(|a| ipnet::IpNet::from(*a)).collect();
    if let Some(prev) = &conf.prev_result {
        let listed = addresses_of(prev, &attachment.ifname, &netns_path.display().to_string());
        if listed != expected {
            return Err(wrong(format!("the previous result lists {listed:?}; skiff-agent has {expected:?}")));
        }
    }
    expected.retain(|a| !has.contains(a));
    if !expected.is_empty() {
        return Err(wrong(format!("{} lacks {expected:?}", attachment.ifname)));
    }
    Ok(())
}

async fn gc(conf: &NetConf, client: &Client) -> Result<(), CniError> {
    let valid: Vec<Attachment> = conf
        .valid_attachments
        .iter()
        .map(|a| Attachment { container_id: a.container_id.clone(), ifname: a.ifname.clone() })
        .collect();
    let removed = client.gc(valid)?;
    let host = Netlink::here().map_err(io_failure("cannot open rtnetlink"))?;
    let mut failures = Vec::new();
    for endpoint in removed {
        if let Err(e) = host.delete(&endpoint.host_ifname).await {
            failures.push(e.to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::INTERFACE_FAILED,
            "some stale veths could not be deleted",
            failures.join("; "),
        ))
    }
}
