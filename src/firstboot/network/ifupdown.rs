//! ifupdown: hninit's `interfaces.d/hninit`, and the edit of the image's own
//! `/etc/network/interfaces` (its stanzas for hninit's interfaces commented
//! out, `interfaces.d` sourced).

use crate::firstboot::network::Iface;
use crate::firstboot::plan::HEADER;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Comments out the image's stanzas for `ours` in `/etc/network/interfaces`
/// and makes sure it sources `interfaces.d`.
pub(crate) fn ifupdown_main(existing: &[u8], ours: &[String]) -> Vec<u8> {
    const KEYWORDS: [&str; 6] = ["iface", "auto", "mapping", "source", "source-directory", "rename"];
    let mut out = Vec::with_capacity(existing.len() + 64);
    let mut in_ours = false;
    let mut sourced = false;
    for line in existing.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let words: Vec<&str> = text.split_whitespace().collect();
        let first = words.first().copied().unwrap_or("");
        let keyword = KEYWORDS.contains(&first) || first.starts_with("allow-");
        if keyword {
            in_ours = first == "iface" && words.get(1).is_some_and(|w| ours.iter().any(|o| o == w));
        }
        if matches!(first, "source" | "source-directory") && words.iter().skip(1).any(|w| w.contains("interfaces.d")) {
            sourced = true;
        }
        if in_ours {
            out.extend_from_slice(b"#hninit# ");
            out.extend_from_slice(line);
            continue;
        }
        if first == "auto" || first.starts_with("allow-") {
            let names: Vec<&str> = words[1..].to_vec();
            let kept: Vec<&str> = names.iter().copied().filter(|n| !ours.iter().any(|o| o == n)).collect();
            if kept.len() != names.len() {
                out.extend_from_slice(b"#hninit# ");
                out.extend_from_slice(line);
                if !line.ends_with(b"\n") {
                    out.push(b'\n');
                }
                if !kept.is_empty() {
                    out.extend_from_slice(format!("{first} {}\n", kept.join(" ")).as_bytes());
                }
                continue;
            }
        }
        out.extend_from_slice(line);
    }
    if !sourced {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(b"\n# Added by hninit: its configuration is in interfaces.d/hninit.\nsource /etc/network/interfaces.d/*\n");
    }
    out
}

pub(crate) fn ifupdown_file(ifaces: &[Iface], dns: &[IpAddr]) -> String {
    let mut s = HEADER.to_string();
    let mut dns_done = dns.is_empty();
    for i in ifaces {
        let _ = write!(s, "\nauto {}\n", i.name);
        let mut stanzas = 0;
        for (family, addrs, gw) in [("inet", i.v4().collect::<Vec<_>>(), i.gw4), ("inet6", i.v6().collect(), i.gw6)] {
            for (k, a) in addrs.iter().enumerate() {
                let _ = write!(s, "iface {} {family} static\n\taddress {a}\n", i.name);
                if k == 0 {
                    if let Some(g) = gw {
                        let _ = writeln!(s, "\tgateway {g}");
                    }
                    if !dns_done {
                        let list: Vec<String> = dns.iter().map(ToString::to_string).collect();
                        let _ = writeln!(s, "\tdns-nameservers {}", list.join(" "));
                        dns_done = true;
                    }
                    for (dest, gw) in i.routes.iter().filter(|(_, g)| g.is_ipv4() == (family == "inet")) {
                        let six = if gw.is_ipv6() { " -6" } else { "" };
                        let dest = dest.map(|d| d.to_string()).unwrap_or_else(|| "default".into());
                        let _ = writeln!(s, "\tup ip{six} route add {dest} via {gw} dev {}", i.name);
                    }
                }
                stanzas += 1;
            }
        }
        if stanzas == 0 {
            let _ = writeln!(s, "iface {} inet manual", i.name);
        }
    }
    s
}
