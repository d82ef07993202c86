//! The platform settings of the host configuration (`hninit.data_disks`,
//! `swap`, `hotplug`, `sshd`, `console`), the image-wide defaults file and which layer
//! wins (`hninit::config::platform`): named refusals, defaults, resolution.

use hninit::config::model::Extra;
use hninit::config::parse::{parse, ConfigError};
use hninit::config::platform::*;


fn host(hninit: &str) -> Result<Extra, ConfigError> {
    let doc = format!(r#"{{"vm_hostname": "web1", "hninit": {hninit}}}"#);
    parse(doc.as_bytes()).map(|p| p.config.hninit.unwrap_or_default())
}

fn refused(hninit: &str) -> String {
    host(hninit).unwrap_err().to_string()
}

#[test]
fn defaults_are_gandis() {
    let p = resolve(None, None);
    assert!(p.data_disks && p.swap && p.hotplug_cpu && p.hotplug_memory && p.sshd && p.compression);
    assert_eq!((p.mount_root.as_str(), p.options.as_str(), p.idle_timeout), ("/srv", "nosuid,nodev", 600));
    assert_eq!(p.permit_root_login, "prohibit-password");
    assert_eq!(p.password_authentication, None);
    assert!(p.console && p.management && p.management_key.is_none());
    assert_eq!(resolve(Some(&host("{}").unwrap()), None), p);
}

const MGMT: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBO6DsSv7VxmHa7D2RPsNH9lsiScoL4AEBK0KGZAwVDR ops@provider";

#[test]
fn management_key_and_console_switches() {
    // The image carries the provider's key; a host turns it (and the console prompt) off.
    let image = parse_defaults(format!(r#"{{"sshd": {{"management_key": "{MGMT}"}}}}"#).as_bytes()).unwrap();
    let p = resolve(None, Some(&image));
    assert!(p.management && p.management_key.as_deref() == Some(MGMT));
    let h = host(r#"{"sshd": {"management": false}, "console": {"enabled": false}}"#).unwrap();
    let p = resolve(Some(&h), Some(&image));
    assert!(!p.management && !p.console);
    assert_eq!(p.management_key.as_deref(), Some(MGMT), "the key stays known, unused");
    assert_eq!(
        refused(r#"{"sshd": {"management_key": "ssh-ed25519 not-base64!"}}"#),
        "config: hninit.sshd.management_key: not an ssh public key line: the key is not valid base64"
    );
    assert_eq!(
        refused(r#"{"sshd": {"management": true}}"#),
        "config: hninit.sshd.management: true without sshd.management_key (the key to install)"
    );
    assert_eq!(refused(r#"{"console": {"enabled": "yes"}}"#), "config: hninit.console.enabled: invalid type: string \"yes\", expected a boolean");
    assert!(refused(r#"{"console": {"tty": "hvc0"}}"#).starts_with("config: hninit.console.tty: unknown field"));
    // What instantiation writes for the booted system keeps both.
    let text = host_settings(&only_platform(&h)).unwrap();
    let back = parse_defaults(&text).unwrap();
    assert_eq!(resolve(Some(&back), Some(&image)), resolve(Some(&h), Some(&image)));
}

#[test]
fn host_wins_over_image_field_by_field() {
    let image = parse_defaults(br#"{"data_disks": {"mount_root": "/data", "idle_timeout": 0}, "swap": {"enabled": false}, "sshd": {"compression": false}}"#).unwrap();
    let h = host(r#"{"data_disks": {"options": "noatime"}, "swap": {"enabled": true}, "hotplug": {"memory": false}, "sshd": {"enabled": false}}"#).unwrap();
    let p = resolve(Some(&h), Some(&image));
    assert_eq!(p.mount_root, "/data", "image default kept where the host says nothing");
    assert_eq!(p.idle_timeout, 0);
    assert_eq!(p.options, "noatime", "host value");
    assert!(p.swap, "host wins");
    assert!(p.hotplug_cpu && !p.hotplug_memory);
    assert!(!p.sshd && !p.compression);
    let p = resolve(None, Some(&image));
    assert!(!p.swap);
    // null is "not said": the layer below decides.
    let h = host(r#"{"swap": {"enabled": null}, "data_disks": null}"#).unwrap();
    assert!(!resolve(Some(&h), Some(&image)).swap);
}

#[test]
fn refusals_name_the_field() {
    assert_eq!(refused(r#"{"data_disks": {"mount_root": "srv"}}"#), "config: hninit.data_disks.mount_root: \"srv\" is not an absolute path without empty, . or .. components");
    for bad in ["/", "/etc", "/usr/local/srv", "/srv/../etc", "/srv//x", "/srv/", "/hostpart/data", "/var", "/s rv", "/proc/1"] {
        let e = refused(&format!(r#"{{"data_disks": {{"mount_root": "{bad}"}}}}"#));
        assert!(e.starts_with("config: hninit.data_disks.mount_root: "), "{bad}: {e}");
    }
    for good in ["/srv", "/data", "/var/srv", "/mnt/disks", "/home/disks"] {
        assert!(host(&format!(r#"{{"data_disks": {{"mount_root": "{good}"}}}}"#)).is_ok(), "{good}");
    }
    for bad in ["", "noatime,", ",ro", "a,,b", "uid=1000 gid=1", "x\\\"y", "a\\\\b", "context='x'"] {
        let e = refused(&format!(r#"{{"data_disks": {{"options": "{bad}"}}}}"#));
        assert!(e.starts_with("config: hninit.data_disks.options: "), "{bad}: {e}");
    }
    assert!(host(r#"{"data_disks": {"options": "nosuid,nodev,noatime,commit=60,x-systemd.device-timeout=5s"}}"#).is_ok());
    assert_eq!(
        refused(r#"{"data_disks": {"idle_timeout": 604801}}"#),
        "config: hninit.data_disks.idle_timeout: 604801 seconds, at most 604800 (a week); 0 never unmounts"
    );
    assert!(refused(r#"{"data_disks": {"idle_timeout": -1}}"#).starts_with("config: hninit.data_disks.idle_timeout: invalid value"));
    assert!(refused(r#"{"sshd": {"permit_root_login": "without-password"}}"#).starts_with("config: hninit.sshd.permit_root_login: "));
    assert_eq!(
        refused(r#"{"swap": {"enable": true}}"#),
        "config: hninit.swap.enable: unknown field `enable`, expected `enabled`"
    );
    assert!(refused(r#"{"hotplug": {"cpu": "yes"}}"#).starts_with("config: hninit.hotplug.cpu: invalid type: string \"yes\", expected a boolean"));
    assert!(refused(r#"{"hotplug": [true]}"#).starts_with("config: hninit.hotplug: invalid type"));
}

#[test]
fn the_image_file_has_only_the_platform_members() {
    assert!(parse_defaults(b"{}").is_ok());
    assert_eq!(
        parse_defaults(br#"{"timezone": "Europe/Paris"}"#).unwrap_err().to_string(),
        "config: timezone: unknown field `timezone`, expected one of `data_disks`, `swap`, `hotplug`, `sshd`, `console`"
    );
    assert_eq!(
        parse_defaults(br#"{"data_disks": {"mount_root": "/etc"}}"#).unwrap_err().to_string(),
        "config: data_disks.mount_root: /etc is in /etc, a directory of the system"
    );
    assert!(parse_defaults(br#"{"swap": []}"#).unwrap_err().to_string().starts_with("config: swap: invalid type"));
    assert!(parse_defaults(&vec![b' '; MAX_DEFAULTS + 1]).is_err());
    assert!(parse_defaults(b"[]").is_err());
}

#[test]
fn host_settings_read_back_as_the_image_file_does() {
    assert_eq!(host_settings(&host("{}").unwrap()), None);
    let h = host(r#"{"timezone": "Europe/Paris", "swap": {"enabled": false}, "data_disks": {"idle_timeout": 0}}"#).unwrap();
    let text = host_settings(&h).unwrap();
    let back = parse_defaults(&text).unwrap();
    assert_eq!(back, only_platform(&h));
    assert_eq!(resolve(Some(&back), None), resolve(Some(&h), None));
}

#[test]
fn only_platform_keeps_the_four_members() {
    let h = host(r#"{"timezone": "Europe/Paris", "swap": {"enabled": false}}"#).unwrap();
    let o = only_platform(&h);
    assert_eq!(o.timezone, None);
    assert_eq!(o.swap, h.swap);
}
