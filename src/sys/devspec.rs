//! Device specifications as written on the command line (`LABEL=`, `UUID=`,
//! `PARTUUID=`, `PARTLABEL=`, `/dev/…`) and the block-device facts they are
//! matched against. Pure: the facts are gathered by `devices`.

use crate::sys::probe::Superblock;
use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevSpec {
    Label(String),
    Uuid(String),
    PartUuid(String),
    PartLabel(String),
    Path(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not LABEL=, UUID=, PARTUUID=, PARTLABEL= or an absolute /dev path")]
pub struct DevSpecError(pub String);

/// Longest accepted value (a label is at most 256 bytes on btrfs).
const MAX_SPEC: usize = 512;

impl DevSpec {
    pub fn parse(s: &str) -> Result<DevSpec, DevSpecError> {
        let bad = || DevSpecError(s.to_string());
        if s.len() > MAX_SPEC || s.contains('\0') {
            return Err(bad());
        }
        let nonempty = |v: &str| {
            if v.is_empty() {
                Err(bad())
            } else {
                Ok(v.to_string())
            }
        };
        if let Some(v) = s.strip_prefix("LABEL=") {
            Ok(DevSpec::Label(nonempty(v)?))
        } else if let Some(v) = s.strip_prefix("UUID=") {
            Ok(DevSpec::Uuid(nonempty(v)?.to_ascii_lowercase()))
        } else if let Some(v) = s.strip_prefix("PARTUUID=") {
            Ok(DevSpec::PartUuid(nonempty(v)?.to_ascii_lowercase()))
        } else if let Some(v) = s.strip_prefix("PARTLABEL=") {
            Ok(DevSpec::PartLabel(nonempty(v)?))
        } else if s.starts_with("/dev/") && !s.split('/').any(|c| c == "..") {
            Ok(DevSpec::Path(s.to_string()))
        } else {
            Err(bad())
        }
    }

    /// Whether matching needs the partition table read (PARTUUID is not in sysfs).
    pub fn needs_partuuid(&self) -> bool {
        matches!(self, DevSpec::PartUuid(_))
    }

    pub fn matches(&self, dev: &BlockDev) -> bool {
        let sb = dev.superblock.as_ref();
        match self {
            DevSpec::Label(l) => sb.and_then(|s| s.label.as_deref()) == Some(l.as_str()),
            DevSpec::Uuid(u) => sb
                .and_then(|s| s.uuid.as_deref())
                .is_some_and(|x| x.eq_ignore_ascii_case(u)),
            DevSpec::PartUuid(u) => dev
                .partuuid
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(u)),
            DevSpec::PartLabel(l) => dev.partname.as_deref() == Some(l.as_str()),
            DevSpec::Path(p) => {
                dev.path.as_os_str() == p.as_str()
                    || dev.aliases.iter().any(|a| a.as_os_str() == p.as_str())
            }
        }
    }
}

impl fmt::Display for DevSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevSpec::Label(v) => write!(f, "LABEL={v}"),
            DevSpec::Uuid(v) => write!(f, "UUID={v}"),
            DevSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DevSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
            DevSpec::Path(v) => write!(f, "{v}"),
        }
    }
}

/// What hninit knows about one block device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name, e.g. `vda2`.
    pub name: String,
    /// Device node, e.g. `/dev/vda2`.
    pub path: PathBuf,
    /// Other names for the same node a user may write (none without udev, kept for `/dev/root`-style aliases).
    pub aliases: Vec<PathBuf>,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    /// Partition number when this is a partition.
    pub partn: Option<u32>,
    /// Parent disk name for a partition (`vda` for `vda2`).
    pub parent: Option<String>,
    /// GPT partition name (PARTLABEL), from sysfs.
    pub partname: Option<String>,
    /// Partition UUID, read from the parent's partition table when asked for.
    pub partuuid: Option<String>,
    pub superblock: Option<Superblock>,
    /// Removable media: sysfs `removable` of the disk is 1, or it hangs off USB.
    pub removable: bool,
    /// Why the probe failed, if it did (shown in the diagnosis).
    pub probe_error: Option<String>,
}

impl BlockDev {
    /// One line for the diagnosis: name, size, type, label, uuid, partlabel.
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({} MiB)", self.path.display(), self.size_bytes >> 20);
        match &self.superblock {
            Some(sb) => {
                s.push_str(&format!(" TYPE={}", sb.fstype.name()));
                if let Some(l) = &sb.label {
                    s.push_str(&format!(" LABEL={l:?}"));
                }
                if let Some(u) = &sb.uuid {
                    s.push_str(&format!(" UUID={u}"));
                }
            }
            None => match &self.probe_error {
                Some(e) => s.push_str(&format!(" unreadable: {e}")),
                None => s.push_str(" TYPE=unknown"),
            },
        }
        if let Some(p) = &self.partname {
            s.push_str(&format!(" PARTLABEL={p:?}"));
        }
        if let Some(p) = &self.partuuid {
            s.push_str(&format!(" PARTUUID={p}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(DevSpec::parse("LABEL=hostpart"), Ok(DevSpec::Label("hostpart".into())));
        assert_eq!(
            DevSpec::parse("UUID=ABCD-1234"),
            Ok(DevSpec::Uuid("abcd-1234".into()))
        );
        assert_eq!(DevSpec::parse("PARTUUID=X"), Ok(DevSpec::PartUuid("x".into())));
        assert_eq!(DevSpec::parse("PARTLABEL=a b"), Ok(DevSpec::PartLabel("a b".into())));
        assert_eq!(DevSpec::parse("/dev/vda2"), Ok(DevSpec::Path("/dev/vda2".into())));
    }

    #[test]
    fn refuses_nonsense() {
        for s in ["", "LABEL=", "hostpart", "/etc/passwd", "/dev/../etc", "FOO=bar"] {
            assert!(DevSpec::parse(s).is_err(), "{s}");
        }
    }
}
