//! Which configuration sources are trusted, and what a source that fails does:
//! the pure decision behind `source::find_config`, one row of the table in
//! `docs/config.md` ("Which sources are trusted") per case, each tested below.
//!
//! A host is *instantiated* once `hn-state/config.json` (the last configuration
//! applied) exists. Before that, a broken source stops the boot (a half-made or
//! unconfigured machine is worse than a clear error); after it, nothing found on
//! a disk may stop the boot or take the host over: a source that fails is a
//! warning and the stored configuration is used, and a configuration on
//! removable media is ignored unless `hn.config=` names it.

/// Where a configuration was looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `hn.config=` named it: the operator's explicit choice.
    Explicit,
    /// A swap-device candidate (it carries a swap signature; see
    /// `source::choose_candidates`), on fixed or removable media.
    SwapDevice { removable: bool },
    /// `hn-state/host.json` on the host partition.
    HostJson,
    /// `hn-state/config.json`, the stored (last applied) configuration.
    Stored,
}

/// What reading the source gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// A valid configuration.
    Config,
    /// Nothing there (no file, no archive at the offset): not a source.
    Nothing,
    /// There, but unreadable, damaged or invalid (or `hn.config=` names nothing).
    Failed,
}

/// What the boot does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This configuration is the host's.
    Apply,
    /// Look at the next source.
    Next,
    /// Warn that it is ignored, then look at the next source.
    Ignore,
    /// Warn, and boot with the stored configuration.
    KeepStored,
    /// The boot fails with the error (then `hn.on_error`).
    Fail,
}

/// The trust policy. Pure.
pub fn decide(kind: Kind, instantiated: bool, read: Read) -> Outcome {
    match (kind, read) {
        (Kind::Stored, Read::Config) => Outcome::Apply,
        (Kind::Stored, Read::Nothing) => Outcome::Next,
        // The stored configuration is the last resort: nothing to fall back to.
        (Kind::Stored, Read::Failed) => Outcome::Fail,
        (Kind::Explicit, Read::Nothing) | (_, Read::Failed) => {
            if instantiated {
                Outcome::KeepStored
            } else {
                Outcome::Fail
            }
        }
        (_, Read::Nothing) => Outcome::Next,
        (Kind::SwapDevice { removable: true }, Read::Config) if instantiated => Outcome::Ignore,
        (_, Read::Config) => Outcome::Apply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Kind::*;
    use Outcome::*;

    /// The table of docs/config.md, row by row: (source, read, not instantiated, instantiated).
    #[test]
    fn every_row_of_the_documented_table() {
        let fixed = SwapDevice { removable: false };
        let usb = SwapDevice { removable: true };
        let rows: &[(Kind, Read, Outcome, Outcome)] = &[
            (Explicit, Read::Config, Apply, Apply),
            (Explicit, Read::Nothing, Fail, KeepStored),
            (Explicit, Read::Failed, Fail, KeepStored),
            (fixed, Read::Config, Apply, Apply),
            (usb, Read::Config, Apply, Ignore),
            (fixed, Read::Nothing, Next, Next),
            (usb, Read::Nothing, Next, Next),
            (fixed, Read::Failed, Fail, KeepStored),
            (usb, Read::Failed, Fail, KeepStored),
            (HostJson, Read::Config, Apply, Apply),
            (HostJson, Read::Nothing, Next, Next),
            (HostJson, Read::Failed, Fail, KeepStored),
            (Stored, Read::Config, Apply, Apply),
            (Stored, Read::Nothing, Next, Next),
            (Stored, Read::Failed, Fail, Fail),
        ];
        for (kind, read, fresh, inst) in rows {
            assert_eq!(decide(*kind, false, *read), *fresh, "{kind:?} {read:?} on a fresh host");
            assert_eq!(decide(*kind, true, *read), *inst, "{kind:?} {read:?} on an instantiated host");
        }
    }
}
