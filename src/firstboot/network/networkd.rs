//! systemd-networkd: one `60-hninit-NAME.network` file per interface.

use crate::firstboot::network::Iface;
use crate::firstboot::plan::HEADER;
use std::fmt::Write as _;
use std::net::IpAddr;

pub(crate) fn networkd_file(i: &Iface, dns: &[IpAddr]) -> String {
    let mut s = format!("{HEADER}[Match]\nName={}\n\n[Network]\n", i.name);
    for a in &i.addrs {
        let _ = writeln!(s, "Address={a}");
    }
    for g in i.gw4.iter().chain(i.gw6.iter()) {
        let _ = writeln!(s, "Gateway={g}");
    }
    for d in dns {
        let _ = writeln!(s, "DNS={d}");
    }
    for (dest, gw) in &i.routes {
        s.push_str("\n[Route]\n");
        if let Some(d) = dest {
            let _ = writeln!(s, "Destination={d}");
        }
        let _ = writeln!(s, "Gateway={gw}");
    }
    s
}
