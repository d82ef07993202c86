//! `vm_conf.run` once per host: the done-markers of the run-once unit
//! (`hninit-run.service`, written by `render`). The command is done for a
//! configuration when `hn-state/run-done/<config digest>` exists on the host
//! partition ([`crate::layout::RUN_DONE_DIR`]), so an upgrade to a new image does
//! not run it again (the stored configuration is re-applied to each image, the
//! marker stays on the host partition), and a changed configuration (another
//! digest) runs it once more. A copy of the marker inside the image
//! (`/var/lib/hninit/run-done.<digest>`) covers a root instantiated offline
//! (`hnctl firstboot`) or booted without its host partition.
//!
//! At-least-once: the markers are written after the command succeeded; a power
//! cut between the two runs it again on the next boot.

use crate::layout::{HOSTPART_CANDIDATES, RUN_DONE_DIR};

/// The marker inside the image for `digest`.
pub fn image_marker(digest: &str) -> String {
    format!("/var/lib/hninit/run-done.{digest}")
}

/// The unit's `ConditionPathExists=` lines: none of the markers for `digest`
/// exists (conditions without `|` must all hold).
pub fn conditions(digest: &str) -> String {
    let mut s = format!("ConditionPathExists=!{}\n", image_marker(digest));
    for h in HOSTPART_CANDIDATES {
        s.push_str(&format!("ConditionPathExists=!{h}/{RUN_DONE_DIR}/{digest}\n"));
    }
    s
}

/// The unit's `ExecStartPost=` lines that record the command as done: in the
/// image, and on the host partition wherever it is mounted (synced). `$$` is a
/// `$` for systemd; the digest is hex, nothing else needs quoting.
pub fn record(digest: &str) -> String {
    let hosts = HOSTPART_CANDIDATES.join(" ");
    let marker = image_marker(digest);
    format!(
        "ExecStartPost=/bin/mkdir -p /var/lib/hninit\n\
         ExecStartPost=/bin/touch {marker}\n\
         ExecStartPost=/bin/sh -c 'for h in {hosts}; do if [ -d \"$$h/hn-state\" ]; then mkdir -p \"$$h/{RUN_DONE_DIR}\" && touch \"$$h/{RUN_DONE_DIR}/{digest}\" && sync; exit; fi; done; echo \"hninit-run: no host partition: done-marker kept in the image only\"'\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_keyed_by_digest_and_on_the_host_partition() {
        let d = "ab12";
        let c = conditions(d);
        assert_eq!(
            c,
            "ConditionPathExists=!/var/lib/hninit/run-done.ab12\nConditionPathExists=!/hostpart/hn-state/run-done/ab12\nConditionPathExists=!/run/hninit/hostpart/hn-state/run-done/ab12\n"
        );
        let r = record(d);
        assert!(r.contains("touch /var/lib/hninit/run-done.ab12\n"), "{r}");
        assert!(r.contains("touch \"$$h/hn-state/run-done/ab12\""), "{r}");
        assert!(!conditions("cd34").contains("ab12"));
    }
}
