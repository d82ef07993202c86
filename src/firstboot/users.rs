//! The users a configuration asks for: Gandi's `vm_conf.user` (an
//! administrator) or, without it, `vm_conf.ssh_key` for root, then
//! `hninit.users`, merged by name. `detect` looks for their homes and keys,
//! `render` makes them (account databases edited by `accounts`).

use crate::config::model::HostConfig;
use crate::firstboot::accounts::UserRequest;

pub(crate) struct WantedUser {
    pub(crate) req: UserRequest,
    pub(crate) keys: Vec<String>,
}

/// Gandi's `vm_conf.user` (an administrator) then `hninit.users`, merged by name.
pub(crate) fn wanted_users(cfg: &HostConfig, warnings: &mut Vec<String>) -> Vec<WantedUser> {
    let mut out: Vec<WantedUser> = Vec::new();
    let lines = |s: &str| {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    if let Some(vm) = &cfg.vm_conf {
        match vm.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => out.push(WantedUser {
                req: UserRequest {
                    name: user.into(),
                    password: vm.password.clone().filter(|p| !p.is_empty()),
                    admin: true,
                    ..Default::default()
                },
                keys: vm.ssh_key.as_deref().map(lines).unwrap_or_default(),
            }),
            None => {
                if let Some(key) = vm.ssh_key.as_deref().filter(|k| !k.trim().is_empty()) {
                    out.push(WantedUser {
                        req: UserRequest {
                            name: "root".into(),
                            ..Default::default()
                        },
                        keys: lines(key),
                    });
                }
                if vm.password.as_deref().is_some_and(|p| !p.is_empty()) {
                    warnings.push("vm_conf.password without vm_conf.user: ignored".into());
                }
            }
        }
    }
    for u in cfg.hninit.iter().flat_map(|h| &h.users) {
        let keys: Vec<String> = u.ssh_keys.iter().flat_map(|k| lines(k)).collect();
        match out.iter_mut().find(|w| w.req.name == u.name) {
            Some(w) => {
                w.req.uid = u.uid.or(w.req.uid);
                w.req.password = u.password.clone().or(w.req.password.take());
                w.req.shell = u.shell.clone().or(w.req.shell.take());
                w.req.groups.extend(u.groups.iter().cloned());
                w.req.admin |= u.sudo;
                for k in keys {
                    if !w.keys.contains(&k) {
                        w.keys.push(k);
                    }
                }
            }
            None => out.push(WantedUser {
                req: UserRequest {
                    name: u.name.clone(),
                    uid: u.uid,
                    password: u.password.clone(),
                    shell: u.shell.clone(),
                    groups: u.groups.clone(),
                    admin: u.sudo,
                },
                keys,
            }),
        }
    }
    out
}
