//! NetworkManager: one keyfile `hninit-NAME.nmconnection` per interface, with
//! a uuid derived from the host identity (stable across images).

use crate::firstboot::identity::{hex, Identity};
use crate::firstboot::network::Iface;
use crate::firstboot::plan::HEADER;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::net::IpAddr;

pub(crate) fn uuid_for(identity: &Identity, name: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(format!("hninit-nm:{}:{name}", identity.id))[..16]
        .try_into()
        .unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

pub(crate) fn nm_file(i: &Iface, dns: &[IpAddr], uuid: &str) -> String {
    let mut s = format!(
        "{HEADER}[connection]\nid=hninit-{n}\nuuid={uuid}\ntype=ethernet\ninterface-name={n}\nautoconnect=true\nautoconnect-priority=100\n\n[ethernet]\n",
        n = i.name
    );
    for (section, addrs, gw, six) in [
        ("ipv4", i.v4().collect::<Vec<_>>(), i.gw4, false),
        ("ipv6", i.v6().collect(), i.gw6, true),
    ] {
        let _ = write!(s, "\n[{section}]\n");
        let method = if !addrs.is_empty() {
            "manual"
        } else if six {
            "auto"
        } else {
            "disabled"
        };
        let _ = writeln!(s, "method={method}");
        for (k, a) in addrs.iter().enumerate() {
            match gw.filter(|_| k == 0) {
                Some(g) => {
                    let _ = writeln!(s, "address{}={a},{g}", k + 1);
                }
                None => {
                    let _ = writeln!(s, "address{}={a}", k + 1);
                }
            }
        }
        let servers: Vec<String> = dns.iter().filter(|d| d.is_ipv6() == six).map(|d| format!("{d};")).collect();
        if !servers.is_empty() && method != "disabled" {
            let _ = writeln!(s, "dns={}", servers.concat());
        }
        let routes = i.routes.iter().filter(|(_, g)| g.is_ipv6() == six);
        for (k, (dest, gw)) in routes.enumerate() {
            let dest = dest
                .map(|d| d.to_string())
                .unwrap_or_else(|| if six { "::/0".into() } else { "0.0.0.0/0".into() });
            let _ = writeln!(s, "route{}={dest},{gw}", k + 1);
        }
    }
    s
}
