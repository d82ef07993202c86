//! The first-boot plan as data: one [`Op`] per file operation inside the new
//! root, each with its reason ([`Step`]), in order, the marker last ([`Plan`]),
//! the marker's contents ([`Marker`]), the errors of looking at an image and
//! planning ([`RenderError`]), and the [`Builder`] the plan's sections push
//! their steps into. `detect` and `render` make a plan, `rootwriter` executes
//! one, `hnctl firstboot --dry-run` prints [`Plan::describe`].

use crate::firstboot::accounts::AccountsError;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io;

pub const MARKER_PATH: &str = crate::layout::INSTANCE_MARKER;
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The first line of every file wholly hninit's.
pub(crate) const HEADER: &str = "# Written by hninit from the host configuration; rewritten at each instantiation.\n";
pub(crate) const WANTS: &str = "/etc/systemd/system/multi-user.target.wants";

/// One file operation inside the new root.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    Write {
        path: String,
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::Write { path, .. } | Op::Symlink { path, .. } | Op::Remove { path } | Op::Mkdir { path, .. } => path,
        }
    }
}

impl std::fmt::Debug for Op {
    /// Contents are summarised (they hold keys and hashes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write {
                path,
                contents,
                mode,
                uid,
                gid,
            } => write!(f, "write {path} ({mode:04o} {uid}:{gid}, {} bytes)", contents.len()),
            Op::Symlink { path, target } => write!(f, "link {path} -> {target}"),
            Op::Remove { path } => write!(f, "remove {path}"),
            Op::Mkdir { path, mode, uid, gid } => write!(f, "mkdir {path} ({mode:04o} {uid}:{gid})"),
        }
    }
}

/// An operation and why it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub reason: String,
    /// Inside a user's home: symbolic links among the parent directories are
    /// followed (still inside the root); elsewhere they are refused.
    pub user_path: bool,
}

/// The ordered operations that instantiate an image; the marker is last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// A human-readable listing (no file contents: they hold secrets).
    pub fn describe(&self) -> String {
        let mut s = format!("first-boot plan: {} operations\n", self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let _ = writeln!(s, "{:3}. {:?} — {}", i + 1, step.op, step.reason);
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }

    /// The step writing `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Op> {
        self.steps.iter().map(|s| &s.op).find(|op| op.path() == path)
    }
}

/// `/etc/hninit/instance.json`: which configuration and identity the root was
/// instantiated with, and the files wholly hninit's (removed when no longer planned).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub config_digest: String,
    pub identity_id: String,
    pub hninit_version: String,
    pub applied_at: u64,
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("detect the image: read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} in the image is a symbolic link to {target:?}, which is not a file inside the image; refusing to edit it")]
    DanglingLink { path: String, target: String },
    #[error("the configuration has network addresses but the image has no network stack hninit knows (systemd-networkd, NetworkManager, ifupdown, ifcfg)")]
    NoNetworkStack,
    #[error("the image has no {path}, needed to {why}")]
    MissingFile { path: String, why: &'static str },
    #[error("timezone {zone}: {path} does not exist in the image")]
    UnknownTimezone { zone: String, path: String },
    #[error("{what}: {value:?} is not a valid address")]
    BadAddress { what: String, value: String },
    #[error("{what}: {value:?} is not valid here")]
    BadValue { what: &'static str, value: String },
    #[error("users: {0}")]
    Accounts(#[from] AccountsError),
}

#[derive(Default)]
pub(crate) struct Builder {
    pub(crate) steps: Vec<Step>,
    pub(crate) warnings: Vec<String>,
    /// Files wholly hninit's, recorded in the marker.
    pub(crate) owned: Vec<String>,
}

// The generic methods are thin: each converts its arguments and calls one
// non-generic function, so the init binary holds one copy of the logic.
impl Builder {
    pub(crate) fn push_step(&mut self, op: Op, reason: String, user_path: bool) {
        self.steps.push(Step { op, reason, user_path });
    }
    pub(crate) fn push(&mut self, op: Op, reason: impl Into<String>, user_path: bool) {
        self.push_step(op, reason.into(), user_path);
    }
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_step(&mut self, path: &str, contents: Vec<u8>, mode: u32, owner: (u32, u32), reason: String, user_path: bool, owned: bool) {
        if owned {
            self.owned.push(path.into());
        }
        let op = Op::Write {
            path: path.into(),
            contents,
            mode,
            uid: owner.0,
            gid: owner.1,
        };
        self.push_step(op, reason, user_path);
    }
    pub(crate) fn write(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32, reason: impl Into<String>) {
        self.write_step(path, contents.into(), mode, (0, 0), reason.into(), false, false);
    }
    pub(crate) fn write_as(
        &mut self,
        path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
        owner: (u32, u32),
        reason: impl Into<String>,
        user_path: bool,
    ) {
        self.write_step(path, contents.into(), mode, owner, reason.into(), user_path, false);
    }
    pub(crate) fn owned_write(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32, reason: impl Into<String>) {
        self.write_step(path, contents.into(), mode, (0, 0), reason.into(), false, true);
    }
    pub(crate) fn link(&mut self, path: &str, target: &str, reason: impl Into<String>, owned: bool) {
        if owned {
            self.owned.push(path.into());
        }
        let op = Op::Symlink {
            path: path.into(),
            target: target.into(),
        };
        self.push_step(op, reason.into(), false);
    }
    pub(crate) fn mkdir(&mut self, path: &str, mode: u32, (uid, gid): (u32, u32), reason: impl Into<String>) {
        let op = Op::Mkdir {
            path: path.into(),
            mode,
            uid,
            gid,
        };
        self.push_step(op, reason.into(), true);
    }
}

/// An absolute path without `.`/`..`/empty components.
pub(crate) fn valid_path(p: &str) -> bool {
    p == "/" || (p.starts_with('/') && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}
