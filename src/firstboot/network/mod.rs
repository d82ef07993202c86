//! The interfaces a configuration describes (Gandi's `vif[].pna[]` with
//! `hninit.interface_names`, `hninit.addresses`, `hninit.routes`) as one model
//! ([`Iface`]: addresses, first gateway per family, routes). One file per
//! stack writes it in that stack's format (`networkd`, `ifupdown`,
//! `networkmanager`, `ifcfg`); `write` is the plan's section that picks the
//! image's stack.

pub mod ifcfg;
pub mod ifupdown;
pub mod networkd;
pub mod networkmanager;
pub mod write;

use crate::config::model::{Extra, HostConfig};
use crate::config::rules;
use crate::firstboot::plan::RenderError;
use std::net::IpAddr;

pub(crate) use crate::config::rules::Cidr;

/// An address, by the validator's rule (`config::rules::parse_ip`).
pub(crate) fn parse_ip(what: &str, s: &str) -> Result<IpAddr, RenderError> {
    rules::parse_ip(s).ok_or_else(|| RenderError::BadAddress {
        what: what.into(),
        value: s.into(),
    })
}

/// An address with its prefix length, by the validator's rule (`config::rules::parse_cidr`).
pub(crate) fn parse_cidr(what: &str, s: &str) -> Result<Cidr, RenderError> {
    rules::parse_cidr(s).map_err(|_| RenderError::BadAddress {
        what: what.into(),
        value: s.into(),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Iface {
    pub(crate) name: String,
    pub(crate) addrs: Vec<Cidr>,
    pub(crate) gw4: Option<IpAddr>,
    pub(crate) gw6: Option<IpAddr>,
    /// Destination (`None`: default) and gateway.
    pub(crate) routes: Vec<(Option<Cidr>, IpAddr)>,
}

impl Iface {
    pub(crate) fn v4(&self) -> impl Iterator<Item = &Cidr> {
        self.addrs.iter().filter(|c| c.addr.is_ipv4())
    }
    pub(crate) fn v6(&self) -> impl Iterator<Item = &Cidr> {
        self.addrs.iter().filter(|c| c.addr.is_ipv6())
    }
    fn set_gateway(&mut self, gw: IpAddr, warnings: &mut Vec<String>) {
        let slot = if gw.is_ipv4() { &mut self.gw4 } else { &mut self.gw6 };
        match slot {
            None => *slot = Some(gw),
            Some(g) if *g == gw => {}
            Some(g) => warnings.push(format!("{}: gateway {gw} ignored, {g} is already the gateway", self.name)),
        }
    }
}

pub(crate) fn interfaces(cfg: &HostConfig, warnings: &mut Vec<String>) -> Result<Vec<Iface>, RenderError> {
    let none = Extra::default();
    let extra = cfg.hninit.as_ref().unwrap_or(&none);
    let mut out: Vec<Iface> = Vec::new();
    fn get<'a>(out: &'a mut Vec<Iface>, name: &str) -> Result<&'a mut Iface, RenderError> {
        if !rules::ifname_ok(name) {
            return Err(RenderError::BadValue {
                what: "interface name",
                value: name.into(),
            });
        }
        if let Some(i) = out.iter().position(|i| i.name == name) {
            return Ok(&mut out[i]);
        }
        let n = out.len();
        out.push(Iface {
            name: name.into(),
            ..Default::default()
        });
        Ok(&mut out[n])
    }
    // By vif number (an insertion sort: a handful of entries, and no sort
    // routine instantiated for them in the init binary).
    let mut vifs: Vec<&crate::config::model::Vif> = Vec::with_capacity(cfg.vif.len());
    for v in &cfg.vif {
        let at = vifs.iter().position(|w| w.vif_number > v.vif_number).unwrap_or(vifs.len());
        vifs.insert(at, v);
    }
    for vif in vifs {
        let name = extra
            .interface_names
            .get(&vif.vif_number.to_string())
            .cloned()
            .unwrap_or_else(|| format!("eth{}", vif.vif_number));
        let what = format!("vif {}", vif.vif_number);
        let iface = get(&mut out, &name)?;
        for pna in &vif.pna {
            let addr = parse_ip(&what, &pna.pna_address)?;
            let (net, gw) = match (&pna.pbn, &pna.pvn) {
                (Some(p), _) => (Some(&p.pbn_network), p.pbn_gateway.as_ref()),
                (None, Some(p)) => (Some(&p.pvn_network), p.pvn_gateway.as_ref()),
                (None, None) => (None, None),
            };
            let prefix = match net {
                Some(n) => {
                    let c = parse_cidr(&what, n)?;
                    if c.addr.is_ipv4() != addr.is_ipv4() {
                        return Err(RenderError::BadAddress { what, value: n.clone() });
                    }
                    c.prefix
                }
                None => {
                    warnings.push(format!("{what}: {addr} has no network; used as a host address"));
                    if addr.is_ipv4() {
                        32
                    } else {
                        128
                    }
                }
            };
            iface.addrs.push(Cidr { addr, prefix });
            if let Some(gw) = gw.filter(|g| !g.is_empty()) {
                let gw = parse_ip(&what, gw)?;
                iface.set_gateway(gw, warnings);
            }
        }
    }
    for a in &extra.addresses {
        let what = format!("hninit.addresses {}", a.address);
        let c = parse_cidr(&what, &a.address)?;
        let iface = get(&mut out, &a.interface)?;
        iface.addrs.push(c);
        if let Some(gw) = a.gateway.as_deref().filter(|g| !g.is_empty()) {
            let gw = parse_ip(&what, gw)?;
            iface.set_gateway(gw, warnings);
        }
    }
    for r in &extra.routes {
        let what = format!("hninit.routes {}", r.destination);
        let gw = parse_ip(&what, &r.gateway)?;
        let dest = if r.destination == "default" {
            None
        } else {
            Some(parse_cidr(&what, &r.destination)?)
        };
        if dest.is_some_and(|d| d.addr.is_ipv4() != gw.is_ipv4()) {
            return Err(RenderError::BadAddress {
                what,
                value: r.gateway.clone(),
            });
        }
        get(&mut out, &r.interface)?.routes.push((dest, gw));
    }
    Ok(out)
}

pub(crate) fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified() || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            !(a.is_loopback() || a.is_unspecified() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80)
        }
    }
}
