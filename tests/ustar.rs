//! The tar reader against archives made by the real `tar` command (GNU tar):
//! ustar, GNU, v7 and pax formats, `./` prefixes, long names, refusals (`..`,
//! absolute names, bad checksums, truncation, oversized members) and random or
//! mutated input, which must never panic.

use hninit::config::tar::{self as ustar, find_member, read_archive, TarError, BLOCK, MAX_ARCHIVE};
use std::fs;
use std::path::Path;
use std::process::Command;

const WANTED: &[&str] = &["gandi/config", "config"];

/// Runs `tar` in `dir` with `args` and returns the archive it wrote to stdout.
fn tar(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .current_dir(dir)
        .env("LC_ALL", "C")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-cf", "-"])
        .args(args)
        .output()
        .expect("tar runs");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A directory with `gandi/config`, `config` and an unrelated file.
fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("gandi")).unwrap();
    fs::write(t.path().join("gandi/config"), b"{\"vm_hostname\": \"gandi\"}").unwrap();
    fs::write(t.path().join("config"), b"{\"vm_hostname\": \"top\"}").unwrap();
    fs::write(t.path().join("other"), vec![b'x'; 3000]).unwrap();
    t
}

#[test]
fn every_format_and_spelling_is_found() {
    let t = tree();
    for format in ["ustar", "gnu", "v7", "pax", "oldgnu"] {
        let fmt = format!("--format={format}");
        for (member, want) in [
            ("./gandi/config", &b"{\"vm_hostname\": \"gandi\"}"[..]),
            ("gandi/config", &b"{\"vm_hostname\": \"gandi\"}"[..]),
            ("config", &b"{\"vm_hostname\": \"top\"}"[..]),
            ("./config", &b"{\"vm_hostname\": \"top\"}"[..]),
        ] {
            let a = tar(t.path(), &[&fmt, "other", member]);
            assert_eq!(find_member(&a, WANTED), Ok(Some(want)), "{format} {member}");
            let r = read_archive(&a, WANTED).unwrap();
            assert_eq!(r.members, 2, "{format} {member}");
            // The archive's bytes end with its end marker; the rest is record padding.
            assert!(r.len <= a.len() && r.len.is_multiple_of(BLOCK));
            assert!(a[r.len..].iter().all(|&b| b == 0));
        }
    }
}

#[test]
fn directory_entries_and_order() {
    let t = tree();
    // `tar ./` lists `./`, `./gandi/`, … : directories are skipped, the first wanted
    // regular file wins (gandi/config or config, whichever comes first).
    let a = tar(t.path(), &["--format=ustar", "gandi", "config"]);
    assert_eq!(find_member(&a, WANTED), Ok(Some(&b"{\"vm_hostname\": \"gandi\"}"[..])));
    let a = tar(t.path(), &["--format=gnu", "config", "gandi"]);
    assert_eq!(find_member(&a, WANTED), Ok(Some(&b"{\"vm_hostname\": \"top\"}"[..])));
    assert_eq!(
        find_member(&a, &["gandi/config"]),
        Ok(Some(&b"{\"vm_hostname\": \"gandi\"}"[..]))
    );
    let a = tar(t.path(), &["--format=gnu", "other"]);
    assert_eq!(find_member(&a, WANTED), Ok(None));
}

#[test]
fn long_names_ustar_prefix_and_gnu_longlink() {
    let t = tempfile::tempdir().unwrap();
    let deep = format!("{}/{}/config", "a".repeat(90), "b".repeat(60));
    fs::create_dir_all(t.path().join(&deep).parent().unwrap()).unwrap();
    fs::write(t.path().join(&deep), b"deep").unwrap();
    for format in ["ustar", "gnu", "pax"] {
        let a = tar(t.path(), &[&format!("--format={format}"), &deep]);
        assert_eq!(find_member(&a, &[&deep]), Ok(Some(&b"deep"[..])), "{format}");
        assert_eq!(find_member(&a, WANTED), Ok(None), "{format}");
    }
}

#[test]
fn symlink_named_gandi_config_is_ignored() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("gandi")).unwrap();
    fs::write(t.path().join("real"), b"secret").unwrap();
    std::os::unix::fs::symlink("../real", t.path().join("gandi/config")).unwrap();
    let a = tar(t.path(), &["--format=ustar", "gandi/config"]);
    assert_eq!(find_member(&a, WANTED), Ok(None));
    fs::write(t.path().join("config"), b"plain").unwrap();
    let a = tar(t.path(), &["--format=gnu", "gandi/config", "config"]);
    assert_eq!(find_member(&a, WANTED), Ok(Some(&b"plain"[..])));
}

#[test]
fn dotdot_member_is_refused() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("sub")).unwrap();
    fs::write(t.path().join("x"), b"x").unwrap();
    // -P keeps the `../` that tar would otherwise strip.
    let a = tar(&t.path().join("sub"), &["--format=ustar", "-P", "../x"]);
    match find_member(&a, WANTED) {
        Err(e @ TarError::BadName { offset: 0, .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("\"../x\"") && msg.contains(".."), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn absolute_member_is_refused() {
    let t = tree();
    let abs = t.path().join("config");
    let a = tar(t.path(), &["--format=gnu", "-P", "other", abs.to_str().unwrap()]);
    match find_member(&a, WANTED) {
        Err(e @ TarError::BadName { .. }) => {
            assert!(e.to_string().contains("absolute"), "{e}");
            // The offset names the second header: after `other` (3000 bytes).
            assert!(matches!(e, TarError::BadName { offset, .. } if offset == 512 + 3072));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_checksum_is_refused() {
    let t = tree();
    let mut a = tar(t.path(), &["--format=ustar", "other", "gandi/config"]);
    let second = 512 + 3072;
    a[second + 1] ^= 0x20; // "gandi" → "gAndi"
    match find_member(&a, WANTED) {
        Err(e @ TarError::Checksum { .. }) => {
            assert!(matches!(e, TarError::Checksum { offset, .. } if offset == second));
            assert!(e.to_string().contains("gAndi/config"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_archive_is_refused() {
    let t = tree();
    let a = tar(t.path(), &["--format=gnu", "other", "gandi/config"]);
    for cut in [100, 512, 1000, 3584, 3600, 4096] {
        let r = find_member(&a[..cut], WANTED);
        assert!(
            matches!(r, Err(TarError::Truncated { .. }) | Err(TarError::Unterminated { .. })),
            "cut at {cut}: {r:?}"
        );
    }
    match find_member(&a[..2000], WANTED) {
        Err(e @ TarError::Truncated { offset: 0, .. }) => assert!(e.to_string().contains("\"other\""), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn member_over_256_kib_is_refused() {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("gandi")).unwrap();
    fs::write(t.path().join("gandi/config"), vec![b' '; 10 << 20]).unwrap();
    let a = tar(t.path(), &["--format=ustar", "gandi/config"]);
    assert!(a.len() > MAX_ARCHIVE);
    match find_member(&a, WANTED) {
        Err(e @ TarError::TooLarge { size, .. }) => {
            assert_eq!(size, 10 << 20);
            assert!(e.to_string().contains("gandi/config"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Just over the limit, within the 1 MiB window: refused too.
    fs::write(t.path().join("gandi/config"), vec![b' '; 256 * 1024 + 1]).unwrap();
    let a = tar(t.path(), &["--format=gnu", "gandi/config"]);
    assert!(matches!(find_member(&a, WANTED), Err(TarError::TooLarge { .. })));
    fs::write(t.path().join("gandi/config"), vec![b' '; 256 * 1024]).unwrap();
    let a = tar(t.path(), &["--format=gnu", "gandi/config"]);
    assert_eq!(find_member(&a, WANTED).unwrap().map(|d| d.len()), Some(256 * 1024));
}

#[test]
fn header_detection_on_real_archives() {
    let t = tree();
    for format in ["ustar", "gnu", "v7", "pax"] {
        let a = tar(t.path(), &[&format!("--format={format}"), "config"]);
        assert!(ustar::looks_like_header(&a), "{format}");
    }
    assert!(!ustar::looks_like_header(&[0u8; 4096]));
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn fix_checksum(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(4 * BLOCK);
        let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = find_member(&buf, WANTED);
        let _ = ustar::looks_like_header(&buf);
    }
    let t = tree();
    let bases: Vec<Vec<u8>> = ["ustar", "gnu", "v7", "pax"]
        .iter()
        .map(|f| tar(t.path(), &[&format!("--format={f}"), "other", "gandi/config", "config"]))
        .collect();
    for i in 0..20000 {
        let mut a = bases[i % bases.len()].clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(a.len());
            a[at] = match rng.below(4) {
                0 => 0,
                1 => b'7',
                2 => 0xff,
                _ => rng.next() as u8,
            };
        }
        // Re-sign the headers half the time so the mutation reaches the parser.
        if i % 2 == 0 {
            for off in [0usize, 512 + 3072, 512 + 3072 + 1024] {
                if off + 512 <= a.len() {
                    fix_checksum(&mut a[off..off + 512]);
                }
            }
        }
        let cut = if i % 5 == 0 { rng.below(a.len()) } else { a.len() };
        if let Ok(Some(data)) = find_member(&a[..cut], WANTED) {
            assert!(data.len() <= ustar::MAX_MEMBER);
        }
    }
}
