//! GRUB environment blocks: round trips, byte-for-byte compatibility with
//! GRUB's own `grub-editenv` in both directions (skipped when grub-common is
//! not installed), and malformed or random input giving errors, never panics.

use hninit::slots::grubenv::{self, GrubEnv, GrubEnvError, BLOCK_SIZE};
use std::path::Path;
use std::process::Command;

fn editenv(file: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("grub-editenv")
        .arg(file)
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "grub-editenv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have_editenv() -> bool {
    let ok = Command::new("grub-editenv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("grub-editenv missing (install grub-common); skipping");
    }
    ok
}

/// Awkward but legal values: escapes, '=', '#', spaces, UTF-8, empty.
const VALUES: &[(&str, &str)] = &[
    ("hn_trial", "1"),
    ("hn_tries", "2"),
    ("back", "a\\b\\\\c\\"),
    ("nl", "line1\nline2\n"),
    ("eq", "a=b=c"),
    ("hash", "#not a comment"),
    ("space", " x y "),
    ("utf", "héllo ✓"),
    ("empty", ""),
];

#[test]
fn round_trip() {
    let mut env = GrubEnv::new();
    for (k, v) in VALUES {
        env.set(k, v).unwrap();
    }
    let block = env.to_block().unwrap();
    assert_eq!(block.len(), BLOCK_SIZE);
    let back = grubenv::parse(&block).unwrap();
    assert_eq!(back, env);
    for (k, v) in VALUES {
        assert_eq!(back.get(k), Some(*v), "{k}");
    }
    // Order is kept; set replaces in place; remove.
    let names: Vec<String> = back.iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        VALUES
            .iter()
            .map(|(k, _)| k.to_string())
            .collect::<Vec<_>>()
    );
    let mut e = back.clone();
    e.set("hn_trial", "0").unwrap();
    assert_eq!(
        e.iter().next().map(|(k, v)| (k, v.to_vec())),
        Some(("hn_trial".into(), b"0".to_vec()))
    );
    assert!(e.remove("hn_tries"));
    assert!(!e.remove("hn_tries"));
    assert_eq!(e.get("hn_tries"), None);
    assert_eq!(grubenv::parse(&e.to_block().unwrap()).unwrap(), e);
}

#[test]
fn names_and_values_checked() {
    let mut e = GrubEnv::new();
    for bad in ["", "a=b", "a\nb", "#x", "nul\0"] {
        assert!(
            matches!(e.set(bad, "v"), Err(GrubEnvError::BadName(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(e.set("k", "a\0b"), Err(GrubEnvError::BadValue(_))));
    assert!(e.is_empty());
}

#[test]
fn too_big_is_an_error() {
    let mut e = GrubEnv::new();
    for i in 0..40 {
        e.set(&format!("var{i:02}"), &"v".repeat(20)).unwrap();
    }
    assert!(matches!(e.to_block(), Err(GrubEnvError::TooBig { .. })));
    // Escapes count: 500 backslashes need 1000 bytes.
    let mut e = GrubEnv::new();
    e.set("b", &"\\".repeat(500)).unwrap();
    assert!(
        matches!(e.to_block(), Err(GrubEnvError::TooBig { need }) if need == 25 + 2 + 1000 + 1)
    );
}

#[test]
fn reads_what_grub_editenv_writes() {
    if !have_editenv() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("grubenv");
    editenv(&f, &["create"]).unwrap();
    let created = std::fs::read(&f).unwrap();
    assert_eq!(
        created,
        grubenv::empty_block(),
        "empty_block() differs from grub-editenv create"
    );
    assert!(grubenv::parse(&created).unwrap().is_empty());
    let args: Vec<String> = VALUES.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let args: Vec<&str> = std::iter::once("set")
        .chain(args.iter().map(String::as_str))
        .collect();
    editenv(&f, &args).unwrap();
    let block = std::fs::read(&f).unwrap();
    let env = grubenv::parse(&block).unwrap();
    for (k, v) in VALUES {
        assert_eq!(env.get(k), Some(*v), "{k}");
    }
    // Byte for byte the same as ours for the same variables in the same order.
    let mut ours = GrubEnv::new();
    for (k, v) in VALUES {
        ours.set(k, v).unwrap();
    }
    assert_eq!(ours.to_block().unwrap(), block);
    // And after grub-editenv unset.
    editenv(&f, &["unset", "hn_tries", "nl"]).unwrap();
    let env = grubenv::parse(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(env.get("hn_tries"), None);
    assert_eq!(env.get("nl"), None);
    assert_eq!(env.get("hn_trial"), Some("1"));
}

#[test]
fn grub_editenv_reads_what_we_write() {
    if !have_editenv() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("grubenv");
    std::fs::write(&f, grubenv::empty_block()).unwrap();
    assert_eq!(editenv(&f, &["list"]).unwrap(), "");
    let mut env = GrubEnv::new();
    for (k, v) in VALUES {
        env.set(k, v).unwrap();
    }
    std::fs::write(&f, env.to_block().unwrap()).unwrap();
    // `list` prints name=value unescaped, one per line.
    let want: String = VALUES.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    assert_eq!(editenv(&f, &["list"]).unwrap(), want);
    // grub-editenv edits our block and we read its edit.
    editenv(&f, &["set", "hn_tries=1", "new=x"]).unwrap();
    let back = grubenv::parse(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(back.get("hn_tries"), Some("1"));
    assert_eq!(back.get("new"), Some("x"));
    assert_eq!(back.get("nl"), Some("line1\nline2\n"));
    // A block without GRUB's warning line (ours when nearly full) is fine for GRUB too.
    let mut full = GrubEnv::new();
    full.set("v", &"x".repeat(BLOCK_SIZE - 25 - 3)).unwrap();
    std::fs::write(&f, full.to_block().unwrap()).unwrap();
    assert_eq!(
        editenv(&f, &["list"]).unwrap(),
        format!("v={}\n", "x".repeat(BLOCK_SIZE - 28))
    );
}

#[test]
fn malformed_blocks_are_errors() {
    let good = grubenv::empty_block();
    // Wrong sizes.
    for len in [0, 1, 25, 512, 1023, 1025, 2048] {
        let mut b = good.clone();
        b.resize(len, b'#');
        assert_eq!(grubenv::parse(&b), Err(GrubEnvError::WrongSize(len)));
    }
    // Bad signature.
    let mut b = good.clone();
    b[2] = b'g';
    assert_eq!(grubenv::parse(&b), Err(GrubEnvError::BadSignature));
    let with_body = |body: &[u8]| {
        let mut b = grubenv::SIGNATURE.to_vec();
        b.extend_from_slice(body);
        b.resize(BLOCK_SIZE, b'#');
        b
    };
    assert!(matches!(
        grubenv::parse(&with_body(b"novalue\n")),
        Err(GrubEnvError::NoEquals(25))
    ));
    assert!(matches!(
        grubenv::parse(&with_body(b"\n")),
        Err(GrubEnvError::NoEquals(_))
    ));
    assert!(matches!(
        grubenv::parse(&with_body(b"=x\n")),
        Err(GrubEnvError::EmptyName(_))
    ));
    // A value running into the end (no newline) is not a variable. (Without
    // the newline before it, it would be part of the '#' padding comment.)
    let mut b = with_body(b"");
    b[BLOCK_SIZE - 4..].copy_from_slice(b"\na=b");
    assert!(matches!(
        grubenv::parse(&b),
        Err(GrubEnvError::Unterminated(_))
    ));
    let mut b = with_body(b"");
    b[BLOCK_SIZE - 4..].copy_from_slice(b"\na=\\");
    assert!(matches!(
        grubenv::parse(&b),
        Err(GrubEnvError::Unterminated(_))
    ));
    let mut b = with_body(b"");
    b[BLOCK_SIZE - 3..].copy_from_slice(b"\nab");
    assert!(matches!(grubenv::parse(&b), Err(GrubEnvError::NoEquals(_))));
    // Comments anywhere are fine; a repeated name keeps its last value.
    let env = grubenv::parse(&with_body(b"# c\na=1\n#\na=2\n")).unwrap();
    assert_eq!(env.get("a"), Some("2"));
    assert_eq!(env.len(), 1);
    // Not UTF-8: kept as bytes, get() says None.
    let env = grubenv::parse(&with_body(b"a=\xff\xfe\n")).unwrap();
    assert_eq!(env.get("a"), None);
    assert_eq!(env.get_bytes("a"), Some(&b"\xff\xfe"[..]));
    assert_eq!(grubenv::parse(&env.to_block().unwrap()).unwrap(), env);
}

/// xorshift64*, so the "fuzz" is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut base = GrubEnv::new();
    for (k, v) in VALUES {
        base.set(k, v).unwrap();
    }
    let seed = base.to_block().unwrap();
    let alphabet = b"#=\\\nab01 \xff";
    let mut parsed = 0;
    for round in 0..20_000 {
        let input: Vec<u8> = match round % 4 {
            // Pure noise of random length.
            0 => (0..rng.below(1100)).map(|_| rng.next() as u8).collect(),
            // The real block truncated or extended.
            1 => {
                let mut b = seed.clone();
                b.resize(rng.below(1100), b'#');
                b
            }
            // Header kept, body from the syntax's own characters.
            2 => {
                let mut b = grubenv::SIGNATURE.to_vec();
                while b.len() < BLOCK_SIZE {
                    b.push(alphabet[rng.below(alphabet.len())]);
                }
                b
            }
            // A few bytes of the real block flipped.
            _ => {
                let mut b = seed.clone();
                for _ in 0..1 + rng.below(6) {
                    let i = rng.below(b.len());
                    b[i] = alphabet[rng.below(alphabet.len())];
                }
                b
            }
        };
        if let Ok(env) = grubenv::parse(&input) {
            parsed += 1;
            // Whatever parses, writes back (if it fits) and parses the same.
            if let Ok(block) = env.to_block() {
                assert_eq!(block.len(), BLOCK_SIZE);
                assert_eq!(grubenv::parse(&block).unwrap(), env);
            }
        }
    }
    assert!(
        parsed > 100,
        "only {parsed} inputs parsed: the mutations are too destructive to test much"
    );
}
