//! Boot step 9, first-boot instantiation: make the mounted generic image this
//! host. Called at boot (before the handoff) and by `hnctl firstboot`.
//!
//! 1. the marker `/etc/hninit/instance.json` of the new root is read: written
//!    for the same configuration digest and the same host identity → "already
//!    instantiated", nothing is written;
//! 2. the host identity is loaded, or created once (`identity`, in
//!    `<hostpart>/hn-state/identity`);
//! 3. the image is looked at (`detect::detect`) and the plan made
//!    (`render::plan`); a dry run stops here and returns it;
//! 4. the plan is applied inside the root (`rootwriter`), the marker last, so an
//!    interrupted first boot has no marker and simply runs again (every step
//!    converges). A changed configuration is applied again the same way, and
//!    what the earlier one wrote that the new one does not is removed.

pub mod accounts;
pub mod detect;
pub mod edit;
pub mod identity;
pub mod network;
pub mod plan;
pub mod render;
pub mod rootwriter;
pub mod runonce;
pub mod users;

use crate::config::model::HostConfig;
use crate::slots::dir::Dir;
use self::identity::{Identity, IdentityError};
use self::detect::{NetworkStack, Resolver};
use self::plan::{Plan, RenderError, Step};
use self::render::Stamp;
use self::rootwriter::{ApplyError, RootDir};
use std::fmt::Write as _;
use std::io;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Plan only: nothing is written, not even a missing identity.
    pub dry_run: bool,
    /// Seconds since the epoch (the marker's `applied_at`, shadow's change day).
    pub now: u64,
}

/// What [`instantiate`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The marker matched: nothing was planned or written.
    pub already_instantiated: bool,
    pub dry_run: bool,
    pub identity_id: String,
    /// Dry run on a host without an identity yet: the plan shows a throwaway one.
    pub identity_ephemeral: bool,
    pub os: Option<String>,
    pub network: Option<NetworkStack>,
    pub resolver: Option<Resolver>,
    /// The plan (absent when already instantiated).
    pub plan: Option<Plan>,
    /// One line per change made (empty for a dry run).
    pub changed: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report {
    /// A few lines for the console or `hnctl`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if self.already_instantiated {
            let _ = writeln!(s, "already instantiated for this configuration (identity {})", self.identity_id);
            return s;
        }
        let os = self.os.as_deref().unwrap_or("unknown image");
        let net = self.network.map(|n| format!("{n:?}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "{os}: network {net}, resolver {:?}, identity {}",
            self.resolver.unwrap_or(Resolver::File),
            self.identity_id
        );
        if self.dry_run {
            if let Some(p) = &self.plan {
                s.push_str(&p.describe());
            }
            if self.identity_ephemeral {
                s.push_str("note: the host has no identity yet; the keys above are a throwaway example\n");
            }
        } else {
            let _ = writeln!(s, "{} changes", self.changed.len());
            for c in &self.changed {
                let _ = writeln!(s, "  {c}");
            }
            for w in &self.warnings {
                let _ = writeln!(s, "warning: {w}");
            }
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirstbootError {
    #[error("first boot: open the new root {root}: {source}")]
    Root {
        root: String,
        #[source]
        source: io::Error,
    },
    #[error("first boot: host identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("first boot: {0}")]
    Render(#[from] RenderError),
    #[error("first boot: writing into the new root: {0}")]
    Apply(#[from] ApplyError),
}

/// Instantiates the image mounted at `root` as the host `cfg` describes (already
/// validated; `config_digest` identifies it), with the identity kept in `state`
/// (the `hn-state/identity` directory, see `identity::open_state_dir`).
pub fn instantiate(root: &Path, state: &dyn Dir, cfg: &HostConfig, config_digest: &str, opts: &Options) -> Result<Report, FirstbootError> {
    instantiate_with(root, state, cfg, config_digest, opts, &mut |_, _| Ok(()))
}

/// [`instantiate`] with a hook called after each applied step (see
/// `rootwriter::apply_with`); tests interrupt the run through it.
pub fn instantiate_with(
    root: &Path,
    state: &dyn Dir,
    cfg: &HostConfig,
    config_digest: &str,
    opts: &Options,
    after_step: &mut dyn FnMut(usize, &Step) -> io::Result<()>,
) -> Result<Report, FirstbootError> {
    let rd = RootDir::open(root).map_err(|source| FirstbootError::Root {
        root: root.display().to_string(),
        source,
    })?;
    let (identity, ephemeral) = if opts.dry_run {
        match identity::load(state)? {
            Some(id) => (id, false),
            None => (Identity::generate()?, true),
        }
    } else {
        (identity::load_or_create(state)?, false)
    };
    let mut report = Report {
        dry_run: opts.dry_run,
        identity_id: identity.id.clone(),
        identity_ephemeral: ephemeral,
        ..Default::default()
    };
    if let Some(m) = detect::read_marker(&rd) {
        if m.config_digest == config_digest && m.identity_id == identity.id {
            report.already_instantiated = true;
            return Ok(report);
        }
    }
    let facts = detect::detect(&rd, cfg)?;
    report.os = facts.os.clone();
    report.network = facts.network;
    report.resolver = facts.resolver;
    let stamp = Stamp {
        config_digest,
        now: opts.now,
    };
    let plan = render::plan(cfg, &facts, &identity, &stamp)?;
    report.warnings = plan.warnings.clone();
    if !opts.dry_run {
        let applied = rootwriter::apply_with(root, &plan, after_step)?;
        report.changed = applied.changed;
    }
    report.plan = Some(plan);
    Ok(report)
}
