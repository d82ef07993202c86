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
//!
//! Images whose init is not systemd ([`Mechanism`], detected by `detect`, first
//! match wins): OpenRC with `/etc/local.d` gets `/etc/local.d/hninit-run.start`
//! (and the `local` service in the default runlevel when it is not); an image
//! with `/etc/rc.local` or `/etc/init.d/rc.local` (sysvinit) gets hninit's block
//! at the top of `/etc/rc.local`. Both call [`RUN_ONCE`], a shell script doing
//! what the unit does (the same markers, the same at-least-once rule; its output
//! goes to `/var/log/hninit-run.log`). An image with none of these still boots:
//! the command is kept as `/etc/hninit/run` and a warning, on the console and
//! in `boot.log`, names it as not scheduled ([`not_scheduled`]).

use crate::firstboot::plan::{Builder, HEADER};
use crate::layout::{HOSTPART_CANDIDATES, RUN_DONE_DIR};

/// The script run by OpenRC's `local` service or by `rc.local`.
pub const RUN_ONCE: &str = "/etc/hninit/run-once";
pub const OPENRC_START: &str = "/etc/local.d/hninit-run.start";
pub const RC_LOCAL: &str = "/etc/rc.local";
const BEGIN: &str = "# BEGIN hninit";
const END: &str = "# END hninit";

/// How the image can run a command once after boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Mechanism {
    /// `hninit-run.service`.
    Systemd,
    /// `/etc/local.d/*.start`; `enable`: the link `/etc/runlevels/default/local`
    /// → this target, when the service is not in the default runlevel yet.
    OpenRc { enable: Option<String> },
    /// `/etc/rc.local` (its current contents, if it exists).
    RcLocal { existing: Option<Vec<u8>> },
    #[default]
    None,
}

/// Quotes `s` for a POSIX shell (single quotes).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// [`RUN_ONCE`]'s contents: skip when a marker for `digest` exists, run
/// `/etc/hninit/run` with `args` split at white space (no globbing, no quote
/// processing), record the markers when it succeeded.
pub fn run_once_script(digest: &str, args: Option<&str>) -> String {
    let hosts = HOSTPART_CANDIDATES.join(" ");
    let marker = image_marker(digest);
    let args = sh_quote(args.unwrap_or("").trim());
    format!(
        "#!/bin/sh\n{HEADER}\
         # vm_conf.run once per host configuration (the markers of hninit-run.service).\n\
         [ -e {marker} ] && exit 0\n\
         for h in {hosts}; do [ -e \"$h/{RUN_DONE_DIR}/{digest}\" ] && exit 0; done\n\
         set -f\n\
         ARGS={args}\n\
         echo \"hninit-run: running /etc/hninit/run (configuration {digest})\"\n\
         /etc/hninit/run $ARGS || {{ rc=$?; echo \"hninit-run: /etc/hninit/run failed with status $rc; it runs again at the next boot\"; exit $rc; }}\n\
         mkdir -p /var/lib/hninit && touch {marker}\n\
         for h in {hosts}; do if [ -d \"$h/hn-state\" ]; then mkdir -p \"$h/{RUN_DONE_DIR}\" && touch \"$h/{RUN_DONE_DIR}/{digest}\" && sync; exit 0; fi; done\n\
         echo \"hninit-run: no host partition: done-marker kept in the image only\"\n"
    )
}

/// The line the boot mechanisms call (never failing the caller: `rc.local`
/// may run under `sh -e`).
fn call() -> String {
    // /var/log may not exist (a minimal image): a failed redirection would
    // skip the command.
    format!("[ -x {RUN_ONCE} ] && {{ mkdir -p /var/log; {RUN_ONCE} >>/var/log/hninit-run.log 2>&1; }} || true\n")
}

/// `/etc/rc.local` with hninit's block right after its first line (the `#!`
/// line; created with one when missing), so that an `exit 0` at its end does
/// not skip it. An earlier hninit block is replaced; other lines are kept.
pub fn rc_local(existing: Option<&[u8]>) -> Vec<u8> {
    let text = existing.unwrap_or(b"#!/bin/sh\nexit 0\n");
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut inside = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        if inside {
            inside = bare != END.as_bytes();
            continue;
        }
        if bare == BEGIN.as_bytes() {
            inside = true;
            continue;
        }
        lines.push(line);
    }
    let mut out = Vec::with_capacity(text.len() + 128);
    let rest: &[&[u8]] = match lines.first() {
        Some(first) if first.starts_with(b"#!") => {
            out.extend_from_slice(first);
            if !first.ends_with(b"\n") {
                out.push(b'\n');
            }
            &lines[1..]
        }
        _ => {
            out.extend_from_slice(b"#!/bin/sh\n");
            &lines[..]
        }
    };
    out.extend_from_slice(format!("{BEGIN}\n{}{END}\n", call()).as_bytes());
    for l in rest {
        out.extend_from_slice(l);
    }
    out
}

/// The warning for an image without a mechanism: names the command (its first
/// line that is not the `#!` line, cut at 80 characters).
pub fn not_scheduled(run: &str) -> String {
    let first = run.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("#!")).unwrap_or("");
    let mut shown: String = first.chars().take(80).collect();
    if shown.len() < first.len() {
        shown.push('…');
    }
    format!(
        "vm_conf.run NOT scheduled: the image has neither systemd, OpenRC's /etc/local.d nor /etc/rc.local; \
         the command is kept as /etc/hninit/run, run it by hand: {shown:?}"
    )
}

/// Plans the run-once files for an image without systemd (after
/// `/etc/hninit/run` itself).
pub(crate) fn plan_without_systemd(b: &mut Builder, m: &Mechanism, digest: &str, args: Option<&str>, run: &str) {
    let wrapper = |b: &mut Builder| b.owned_write(RUN_ONCE, run_once_script(digest, args), 0o755, "runs vm_conf.run once (no systemd in the image)");
    match m {
        Mechanism::Systemd => {}
        Mechanism::OpenRc { enable } => {
            wrapper(b);
            b.owned_write(OPENRC_START, format!("#!/bin/sh\n{HEADER}{}", call()), 0o755, "OpenRC's local service runs vm_conf.run once");
            if let Some(target) = enable {
                b.link("/etc/runlevels/default/local", target, "enable OpenRC's local service (for vm_conf.run)", false);
            }
        }
        Mechanism::RcLocal { existing } => {
            wrapper(b);
            b.write(RC_LOCAL, rc_local(existing.as_deref()), 0o755, "rc.local runs vm_conf.run once");
        }
        Mechanism::None => b.warnings.push(not_scheduled(run)),
    }
}

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
    fn rc_local_gets_the_block_before_its_exit() {
        let debian = b"#!/bin/sh -e\n# rc.local\necho hello\nexit 0\n";
        let out = String::from_utf8(rc_local(Some(debian))).unwrap();
        assert!(out.starts_with("#!/bin/sh -e\n# BEGIN hninit\n[ -x /etc/hninit/run-once ] && { mkdir -p /var/log; /etc/hninit/run-once >>/var/log/hninit-run.log 2>&1; } || true\n# END hninit\n"), "{out}");
        assert!(out.ends_with("# END hninit\n# rc.local\necho hello\nexit 0\n"), "{out}");
        // Idempotent: the block is replaced, not added twice.
        assert_eq!(String::from_utf8(rc_local(Some(out.as_bytes()))).unwrap(), out);
        let made = String::from_utf8(rc_local(None)).unwrap();
        assert!(made.starts_with("#!/bin/sh\n# BEGIN hninit\n") && made.ends_with("# END hninit\nexit 0\n"), "{made}");
        let no_shebang = String::from_utf8(rc_local(Some(b"touch /x\n"))).unwrap();
        assert!(no_shebang.starts_with("#!/bin/sh\n# BEGIN hninit\n") && no_shebang.ends_with("# END hninit\ntouch /x\n"));
    }

    #[test]
    fn the_script_checks_and_records_the_markers() {
        let s = run_once_script("ab12", Some(" --name 'x y' $HOME "));
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("[ -e /var/lib/hninit/run-done.ab12 ] && exit 0\n"), "{s}");
        assert!(s.contains("ARGS='--name '\\''x y'\\'' $HOME'\n"), "{s}");
        assert!(s.contains("touch /var/lib/hninit/run-done.ab12\n"));
        assert!(s.contains("touch \"$h/hn-state/run-done/ab12\""));
        assert!(s.contains("set -f\n"));
    }

    #[test]
    fn the_warning_names_the_command() {
        let w = not_scheduled("#!/bin/sh\n\necho 'first boot done' > /var/log/first-boot\nreboot\n");
        assert!(w.starts_with("vm_conf.run NOT scheduled: "), "{w}");
        assert!(w.ends_with("run it by hand: \"echo 'first boot done' > /var/log/first-boot\""), "{w}");
        assert!(not_scheduled(&"x".repeat(200)).ends_with("…\""));
    }

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
