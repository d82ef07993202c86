//! Editing the image's own text files: hninit's `# BEGIN hninit` … `# END
//! hninit` block inside a file that keeps the image's other lines
//! (`authorized_keys`, `/etc/hosts`), and the one-line rule for values that
//! go into such files.

use crate::firstboot::plan::RenderError;
use std::fmt::Write as _;
use std::net::IpAddr;

const BEGIN: &str = "# BEGIN hninit";
const END: &str = "# END hninit";

pub(crate) fn one_line(what: &'static str, s: &str) -> Result<(), RenderError> {
    if s.contains(['\n', '\r', '\0']) {
        return Err(RenderError::BadValue { what, value: s.into() });
    }
    Ok(())
}

/// Replaces hninit's `# BEGIN hninit` … `# END hninit` block in `text` by `block`
/// (which has no markers), or appends it; other lines are kept byte for byte,
/// except those `drop` rejects.
pub(crate) fn with_block(text: &[u8], block: &str, drop: &dyn Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + block.len() + 32);
    let mut placed = false;
    let mut inside = false;
    let new_block = format!("{BEGIN}\n{block}{END}\n");
    for line in text.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if inside {
            if bare == END.as_bytes() {
                inside = false;
            }
            continue;
        }
        if bare == BEGIN.as_bytes() {
            inside = true;
            if !placed {
                out.extend_from_slice(new_block.as_bytes());
                placed = true;
            }
            continue;
        }
        if drop(bare) {
            continue;
        }
        out.extend_from_slice(line);
    }
    if !placed {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(new_block.as_bytes());
    }
    out
}

pub(crate) fn hosts_file(existing: Option<&[u8]>, fqdn: &str, short: &str, public: &[IpAddr]) -> Vec<u8> {
    let default = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";
    let names = if fqdn == short {
        short.to_string()
    } else {
        format!("{fqdn} {short}")
    };
    let mut block = format!("127.0.1.1\t{names}\n");
    for ip in public {
        let _ = writeln!(block, "{ip}\t{names}");
    }
    let stale = |line: &[u8]| line.split(|b| b.is_ascii_whitespace()).next() == Some(b"127.0.1.1");
    with_block(existing.unwrap_or(default), &block, &stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_replaced_in_place() {
        let t = b"a\n# BEGIN hninit\nold\n# END hninit\nb";
        assert_eq!(with_block(t, "new\n", &|_| false), b"a\n# BEGIN hninit\nnew\n# END hninit\nb");
        assert_eq!(with_block(b"a", "new\n", &|_| false), b"a\n# BEGIN hninit\nnew\n# END hninit\n");
        assert_eq!(with_block(b"", "new\n", &|_| false), b"# BEGIN hninit\nnew\n# END hninit\n");
        let hosts = hosts_file(Some(b"127.0.0.1 localhost\n127.0.1.1 debian\n"), "h", "h", &[]);
        assert_eq!(hosts, b"127.0.0.1 localhost\n# BEGIN hninit\n127.0.1.1\th\n# END hninit\n");
    }
}
