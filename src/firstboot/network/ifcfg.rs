//! RHEL ifcfg: `ifcfg-NAME`, and `route-NAME`/`route6-NAME` when there are routes.

use crate::firstboot::network::Iface;
use crate::firstboot::plan::HEADER;
use std::fmt::Write as _;
use std::net::IpAddr;

/// `ifcfg-NAME`, and `route-NAME`/`route6-NAME` when there are routes.
pub(crate) fn ifcfg_files(i: &Iface, dns: &[IpAddr]) -> (String, Option<String>, Option<String>) {
    let mut s = format!(
        "{HEADER}DEVICE={n}\nNAME={n}\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\n",
        n = i.name
    );
    for (k, a) in i.v4().enumerate() {
        let _ = write!(s, "IPADDR{k}={}\nPREFIX{k}={}\n", a.addr, a.prefix);
    }
    if let Some(g) = i.gw4 {
        let _ = write!(s, "GATEWAY={g}\nDEFROUTE=yes\n");
    }
    for (k, d) in dns.iter().enumerate() {
        let _ = writeln!(s, "DNS{}={d}", k + 1);
    }
    let v6: Vec<String> = i.v6().map(ToString::to_string).collect();
    if let Some((first, rest)) = v6.split_first() {
        let _ = write!(s, "IPV6INIT=yes\nIPV6_AUTOCONF=no\nIPV6ADDR={first}\n");
        if !rest.is_empty() {
            let _ = writeln!(s, "IPV6ADDR_SECONDARIES=\"{}\"", rest.join(" "));
        }
        if let Some(g) = i.gw6 {
            let _ = writeln!(s, "IPV6_DEFAULTGW={g}");
        }
    }
    let routes = |six: bool| {
        let lines: Vec<String> = i
            .routes
            .iter()
            .filter(|(_, g)| g.is_ipv6() == six)
            .map(|(d, g)| {
                format!(
                    "{} via {g} dev {}\n",
                    d.map(|d| d.to_string()).unwrap_or_else(|| "default".into()),
                    i.name
                )
            })
            .collect();
        (!lines.is_empty()).then(|| format!("{HEADER}{}", lines.concat()))
    };
    (s, routes(false), routes(true))
}
