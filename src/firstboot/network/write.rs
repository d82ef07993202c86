//! The plan's network section: the interfaces written in the format of the
//! image's network stack (see `detect` for how it is chosen), nameservers on
//! the first interface; networkd is enabled when it is the only stack.

use crate::firstboot::detect::{ImageFacts, NetworkStack};
use crate::firstboot::identity::Identity;
use crate::firstboot::network::ifcfg::ifcfg_files;
use crate::firstboot::network::ifupdown::{ifupdown_file, ifupdown_main};
use crate::firstboot::network::networkd::networkd_file;
use crate::firstboot::network::networkmanager::{nm_file, uuid_for};
use crate::firstboot::network::Iface;
use crate::firstboot::plan::{Builder, RenderError};
use std::net::IpAddr;

/// The interfaces, in the image's own format.
#[inline(never)]
pub(crate) fn plan_network(b: &mut Builder, image: &ImageFacts, identity: &Identity, ifaces: &[Iface], dns: &[IpAddr]) -> Result<(), RenderError> {
    // Network, in the image's own format.
    if !ifaces.is_empty() {
        match image.network.unwrap_or(NetworkStack::None) {
            NetworkStack::Networkd => {
                for (k, i) in ifaces.iter().enumerate() {
                    let d = if k == 0 { dns } else { &[] };
                    b.owned_write(
                        &format!("/etc/systemd/network/60-hninit-{}.network", i.name),
                        networkd_file(i, d),
                        0o644,
                        format!("systemd-networkd configuration of {}", i.name),
                    );
                }
                if !image.networkd_enabled {
                    for (link, target) in &image.networkd_enable {
                        b.link(link, target, "enable systemd-networkd (no other network stack in the image)", true);
                    }
                }
            }
            NetworkStack::NetworkManager => {
                for (k, i) in ifaces.iter().enumerate() {
                    let d = if k == 0 { dns } else { &[] };
                    let path = format!("/etc/NetworkManager/system-connections/hninit-{}.nmconnection", i.name);
                    b.owned_write(
                        &path,
                        nm_file(i, d, &uuid_for(identity, &i.name)),
                        0o600,
                        format!("NetworkManager connection for {}", i.name),
                    );
                }
            }
            NetworkStack::Ifupdown => {
                b.owned_write(
                    "/etc/network/interfaces.d/hninit",
                    ifupdown_file(ifaces, dns),
                    0o644,
                    "ifupdown configuration",
                );
                let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
                let current = image.interfaces.clone().unwrap_or_default();
                let edited = ifupdown_main(&current, &names);
                if edited != current {
                    b.write(
                        "/etc/network/interfaces",
                        edited,
                        0o644,
                        "source interfaces.d; the image's own stanzas for these interfaces commented out",
                    );
                }
            }
            NetworkStack::Ifcfg => {
                for (k, i) in ifaces.iter().enumerate() {
                    let d = if k == 0 { dns } else { &[] };
                    let (cfgfile, r4, r6) = ifcfg_files(i, d);
                    let dir = "/etc/sysconfig/network-scripts";
                    b.owned_write(
                        &format!("{dir}/ifcfg-{}", i.name),
                        cfgfile,
                        0o644,
                        format!("ifcfg configuration of {}", i.name),
                    );
                    if let Some(r) = r4 {
                        b.owned_write(&format!("{dir}/route-{}", i.name), r, 0o644, format!("IPv4 routes of {}", i.name));
                    }
                    if let Some(r) = r6 {
                        b.owned_write(&format!("{dir}/route6-{}", i.name), r, 0o644, format!("IPv6 routes of {}", i.name));
                    }
                }
            }
            NetworkStack::None => return Err(RenderError::NoNetworkStack),
        }
    }
    Ok(())
}
