//! Why a configuration is refused ([`ConfigError`]: one console line naming
//! the JSON path of the offending value), and how values and paths are shown in
//! messages (quoted and cut; `.key`, `["odd key"]`, `[3]`).

use std::fmt;

/// Why a configuration was refused. `Display` is one console line starting
/// with `config: `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `path` is the JSON path (`vif[0].pna[1].pna_address`), empty for the
    /// document itself.
    #[error("config: {}", Located(path, message))]
    Invalid { path: String, message: String },
    #[error("config: cannot read {file}: {error}")]
    Read { file: String, error: String },
}

impl ConfigError {
    /// The JSON path of the offending value (`None` for a read error).
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            ConfigError::Read { .. } => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ConfigError::Invalid { message, .. } => message,
            ConfigError::Read { error, .. } => error,
        }
    }
}

struct Located<'a>(&'a str, &'a str);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(self.1)
        } else {
            write!(f, "{}: {}", self.0, self.1)
        }
    }
}

pub(crate) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// A value for a message: quoted, escaped, cut at 64 characters.
pub(crate) fn show(s: &str) -> String {
    let mut cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Appends `.key`, or `["key"]` for a key that is not a plain identifier.
pub(crate) fn push_key(out: &mut String, key: &str) {
    if !key.is_empty() && key.len() <= 64 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        out.push_str(&format!("[{}]", show(key)));
    }
}

pub(crate) fn key_path(base: &str, key: &str) -> String {
    let mut s = base.to_string();
    push_key(&mut s, key);
    s
}
