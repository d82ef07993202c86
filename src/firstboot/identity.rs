//! The host's identity: its ssh host key (ed25519) and its machine-id, kept on the
//! host partition in `hn-state/identity/` (0700) so that every image booted on
//! the host — after an upgrade, after a revert — is the same machine to its ssh
//! clients and its journal. Generated once per host from `getrandom(2)`, never
//! regenerated while readable: a damaged file (not a regular file, too large, not
//! a key or machine-id) is set aside as `FILE.bad-N`, logged, and made anew at
//! boot, so that it cannot stop the boot; [`load`] (dry runs) names it as an error.
//!
//! Files (each written by [`write_atomic`], so a crash leaves either nothing or
//! a complete file; a half-created set is completed on the next boot):
//!
//! | file | contents |
//! |---|---|
//! | `ssh_host_ed25519_key` | the private key, OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----`, unencrypted) |
//! | `ssh_host_ed25519_key.pub` | `ssh-ed25519 AAAA… hninit-host-key`, derived from the private key when missing or stale |
//! | `machine-id` | 32 lowercase hex digits and a newline (a random v4 UUID, as systemd makes them) |
//!
//! The OpenSSH encoding is done here (the key pair math is `ed25519-compact`);
//! `ssh-keygen -y` and `ssh-keygen -l` read what it writes (see the tests).
//! The identity id is the first 16 hex digits of the SHA-256 of the public key's
//! SSH wire blob, i.e. of the key's `SHA256:` fingerprint.

use crate::slots::dir::{write_atomic, Dir, RealDir};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io;
use std::path::Path;

/// Where the identity lives, relative to the host partition.
pub const STATE_DIR: &str = crate::layout::IDENTITY_DIR;
pub const KEY_FILE: &str = "ssh_host_ed25519_key";
pub const PUB_FILE: &str = "ssh_host_ed25519_key.pub";
pub const MACHINE_ID_FILE: &str = "machine-id";
/// Comment of the public key kept in the state directory (the copies written
/// into a root say `root@<hostname>`).
pub const STATE_COMMENT: &str = "hninit-host-key";

const KEY_TYPE: &str = "ssh-ed25519";
const PEM_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PEM_END: &str = "-----END OPENSSH PRIVATE KEY-----";
const MAGIC: &[u8] = b"openssh-key-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{step} {dir}/{file}: {source}")]
    Io {
        dir: String,
        file: &'static str,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{dir}/{file} is not a usable ed25519 key: {reason}"
    )]
    BadKey { dir: String, file: &'static str, reason: String },
    #[error("{dir}/{file} is not a machine-id (32 lowercase hex digits): {found:?}")]
    BadMachineId { dir: String, file: &'static str, found: String },
    #[error("getrandom: {0}")]
    Random(#[source] io::Error),
}

/// The host identity. The private key seed is wiped when dropped and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    seed: [u8; 32],
    public: [u8; 32],
    /// 32 lowercase hex digits.
    pub machine_id: String,
    /// First 16 hex digits of the SHA-256 of the public key blob.
    pub id: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.openssh_public(""))
            .field("machine_id", &self.machine_id)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        for b in self.seed.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl Identity {
    /// Builds an identity from a private key seed and a machine-id (checked).
    pub fn from_parts(seed: [u8; 32], machine_id: &str) -> Option<Identity> {
        if !valid_machine_id(machine_id) {
            return None;
        }
        let public = public_from_seed(&seed);
        let id = hex(&Sha256::digest(public_blob(&public)))[..16].to_string();
        Some(Identity {
            seed,
            public,
            machine_id: machine_id.to_string(),
            id,
        })
    }

    /// A fresh identity from the kernel's random generator (not stored).
    pub fn generate() -> Result<Identity, IdentityError> {
        let seed = random_seed()?;
        let machine_id = random_machine_id()?;
        Identity::from_parts(seed, &machine_id).ok_or_else(|| IdentityError::Random(io::Error::other("generated an all-zero machine-id")))
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The private key file, OpenSSH format, with `comment`.
    pub fn openssh_private(&self, comment: &str) -> String {
        encode_private(&self.seed, &self.public, comment)
    }

    /// `ssh-ed25519 AAAA… comment\n` (no comment when empty).
    pub fn openssh_public(&self, comment: &str) -> String {
        let b64 = base64_encode(&public_blob(&self.public));
        if comment.is_empty() {
            format!("{KEY_TYPE} {b64}\n")
        } else {
            format!("{KEY_TYPE} {b64} {comment}\n")
        }
    }

    /// `SHA256:…` as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let b64 = base64_encode(&Sha256::digest(public_blob(&self.public)));
        format!("SHA256:{}", b64.trim_end_matches('='))
    }
}

/// Opens (creating, 0700) `<hostpart>/hn-state/identity`.
pub fn open_state_dir(hostpart: &Path) -> io::Result<RealDir> {
    RealDir::open(&hostpart.join(crate::layout::STATE_DIR), true)?;
    RealDir::open(&hostpart.join(STATE_DIR), true)
}

fn state_io(state: &dyn Dir, file: &'static str, step: &'static str) -> impl FnOnce(io::Error) -> IdentityError {
    let dir = state.label();
    move |source| IdentityError::Io { dir, file, step, source }
}

/// Reads the identity without writing anything; `None` when there is no private
/// key or no machine-id yet (a missing public key is derived).
pub fn load(state: &dyn Dir) -> Result<Option<Identity>, IdentityError> {
    let Some(seed) = read_key(state)? else {
        return Ok(None);
    };
    let Some(machine_id) = read_machine_id(state)? else {
        return Ok(None);
    };
    Ok(Identity::from_parts(seed, &machine_id))
}

/// The host identity, created on the first call and completed after a crash:
/// the private key is generated only when absent; the public key is (re)derived
/// from it when missing or not matching; the machine-id is generated when absent.
pub fn load_or_create(state: &dyn Dir) -> Result<Identity, IdentityError> {
    let seed = match aside_if_damaged(state, KEY_FILE, read_key(state))? {
        Some(seed) => seed,
        None => {
            let seed = random_seed()?;
            let text = encode_private(&seed, &public_from_seed(&seed), STATE_COMMENT);
            write_atomic(state, KEY_FILE, text.as_bytes()).map_err(state_io(state, KEY_FILE, "write"))?;
            seed
        }
    };
    let machine_id = match aside_if_damaged(state, MACHINE_ID_FILE, read_machine_id(state))? {
        Some(id) => id,
        None => {
            let id = random_machine_id()?;
            write_atomic(state, MACHINE_ID_FILE, format!("{id}\n").as_bytes()).map_err(state_io(state, MACHINE_ID_FILE, "write"))?;
            id
        }
    };
    let identity = Identity::from_parts(seed, &machine_id).ok_or_else(|| IdentityError::BadMachineId {
        dir: state.label(),
        file: MACHINE_ID_FILE,
        found: machine_id.clone(),
    })?;
    let want = identity.openssh_public(STATE_COMMENT);
    let have = state.read(PUB_FILE, 16 * 1024).map_err(state_io(state, PUB_FILE, "read"))?;
    let matches = have
        .as_deref()
        .and_then(|h| parse_public_line(&String::from_utf8_lossy(h)))
        .is_some_and(|pk| pk == identity.public);
    if !matches {
        write_atomic(state, PUB_FILE, want.as_bytes()).map_err(state_io(state, PUB_FILE, "write"))?;
    }
    Ok(identity)
}

/// A damaged identity file (not a regular file, a symlink, too large, or not a
/// key / machine-id) is invalid, never absent, and must not stop the boot: it is
/// set aside as `FILE.bad-N` (kept for inspection, logged) and made anew. An I/O
/// error stays an error (the disk may be failing; nothing is regenerated).
fn aside_if_damaged<T>(state: &dyn Dir, file: &'static str, r: Result<Option<T>, IdentityError>) -> Result<Option<T>, IdentityError> {
    let damaged = match &r {
        Err(IdentityError::BadKey { .. }) | Err(IdentityError::BadMachineId { .. }) => true,
        Err(IdentityError::Io { source, step: "read", .. }) => crate::slots::dir::is_invalid(source),
        _ => false,
    };
    if !damaged {
        return r;
    }
    let why = r.err().map(|e| e.to_string()).unwrap_or_default();
    let to = crate::slots::dir::set_aside(state, file).map_err(state_io(state, file, "set aside"))?;
    warn!("{why}: set aside as {}/{to}; a new one is made (the host's {} changes)", state.label(), if file == KEY_FILE { "ssh host key" } else { "machine-id" });
    Ok(None)
}

fn read_key(state: &dyn Dir) -> Result<Option<[u8; 32]>, IdentityError> {
    let Some(text) = state.read(KEY_FILE, 64 * 1024).map_err(state_io(state, KEY_FILE, "read"))? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&text);
    parse_private(&text)
        .map(|(seed, _)| Some(seed))
        .map_err(|reason| IdentityError::BadKey {
            dir: state.label(),
            file: KEY_FILE,
            reason,
        })
}

fn read_machine_id(state: &dyn Dir) -> Result<Option<String>, IdentityError> {
    let Some(raw) = state
        .read(MACHINE_ID_FILE, 1024)
        .map_err(state_io(state, MACHINE_ID_FILE, "read"))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&raw);
    let id = text.strip_suffix('\n').unwrap_or(&text);
    if valid_machine_id(id) {
        Ok(Some(id.to_string()))
    } else {
        Err(IdentityError::BadMachineId {
            dir: state.label(),
            file: MACHINE_ID_FILE,
            found: text.chars().take(64).collect(),
        })
    }
}

/// 32 lowercase hex digits, not all zero.
pub fn valid_machine_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) && id.bytes().any(|b| b != b'0')
}

/// Fills `buf` from `getrandom(2)` (blocking until the kernel's generator is ready).
pub fn fill_random(buf: &mut [u8]) -> Result<(), IdentityError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe a writable slice we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(IdentityError::Random(e));
        }
        done += n as usize;
    }
    Ok(())
}

fn random_seed() -> Result<[u8; 32], IdentityError> {
    let mut seed = [0u8; 32];
    fill_random(&mut seed)?;
    Ok(seed)
}

fn random_machine_id() -> Result<String, IdentityError> {
    let mut b = [0u8; 16];
    fill_random(&mut b)?;
    // A v4 UUID, as `systemd-id128 new` makes them.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(hex(&b))
}

pub use crate::util::hex;

fn public_from_seed(seed: &[u8; 32]) -> [u8; 32] {
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(*seed));
    *kp.pk
}

// ---- SSH wire encoding -------------------------------------------------------

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// The public key blob: `string "ssh-ed25519", string key`.
fn public_blob(public: &[u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(51);
    put_string(&mut b, KEY_TYPE.as_bytes());
    put_string(&mut b, public);
    b
}

/// The unencrypted `openssh-key-v1` format (PROTOCOL.key in OpenSSH).
fn encode_private(seed: &[u8; 32], public: &[u8; 32], comment: &str) -> String {
    // The check integers only matter for encrypted keys; derived from the key so
    // that the same key always encodes to the same bytes.
    let check: [u8; 4] = Sha256::digest([b"hninit-check".as_slice(), seed].concat())[..4]
        .try_into()
        .unwrap_or([0; 4]);
    let mut private = Vec::new();
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, KEY_TYPE.as_bytes());
    put_string(&mut private, public);
    let mut secret = [0u8; 64];
    secret[..32].copy_from_slice(seed);
    secret[32..].copy_from_slice(public);
    put_string(&mut private, &secret);
    secret.fill(0);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut blob = MAGIC.to_vec();
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut blob, &public_blob(public));
    put_string(&mut blob, &private);
    private.fill(0);
    let b64 = base64_encode(&blob);
    blob.fill(0);
    let mut out = String::with_capacity(b64.len() + 100);
    out.push_str(PEM_BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(70) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, String> {
        if self.0.len() < 4 {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(4);
        self.0 = b;
        Ok(u32::from_be_bytes([a[0], a[1], a[2], a[3]]))
    }
    fn string(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

/// Parses an unencrypted OpenSSH ed25519 private key: its seed and comment.
pub fn parse_private(text: &str) -> Result<([u8; 32], String), String> {
    let start = text.find(PEM_BEGIN).ok_or("no OpenSSH private key header")? + PEM_BEGIN.len();
    let end = text[start..].find(PEM_END).ok_or("no OpenSSH private key footer")? + start;
    let b64: String = text[start..end].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let blob = base64_decode(&b64).ok_or("bad base64")?;
    let rest = blob.strip_prefix(MAGIC).ok_or("not openssh-key-v1")?;
    let mut r = Reader(rest);
    let cipher = r.string()?;
    let kdf = r.string()?;
    r.string()?;
    if cipher != b"none" || kdf != b"none" {
        return Err("the key is encrypted".into());
    }
    if r.u32()? != 1 {
        return Err("not exactly one key".into());
    }
    let pub_blob = r.string()?;
    let mut p = Reader(r.string()?);
    if p.u32()? != p.u32()? {
        return Err("check integers differ".into());
    }
    if p.string()? != KEY_TYPE.as_bytes() {
        return Err("not an ed25519 key".into());
    }
    let public: [u8; 32] = p.string()?.try_into().map_err(|_| "bad public key length")?;
    let secret = p.string()?;
    if secret.len() != 64 {
        return Err("bad private key length".into());
    }
    let comment = String::from_utf8_lossy(p.string()?).into_owned();
    let seed: [u8; 32] = secret[..32].try_into().map_err(|_| "bad private key length")?;
    if public_from_seed(&seed) != public || secret[32..] != public || pub_blob != public_blob(&public).as_slice() {
        return Err("the public half does not match the private key".into());
    }
    Ok((seed, comment))
}

/// The key of an `ssh-ed25519 AAAA… [comment]` line.
pub fn parse_public_line(line: &str) -> Option<[u8; 32]> {
    let mut it = line.split_ascii_whitespace();
    if it.next()? != KEY_TYPE {
        return None;
    }
    let blob = base64_decode(it.next()?)?;
    let mut r = Reader(&blob);
    if r.string().ok()? != KEY_TYPE.as_bytes() {
        return None;
    }
    r.string().ok()?.try_into().ok()
}

// ---- base64 (standard alphabet, padded) --------------------------------------

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::dir::RealDir;

    #[test]
    fn base64_round_trips() {
        for n in 0..20 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 5) as u8).collect();
            let e = base64_encode(&data);
            assert_eq!(e.len() % 4, 0);
            assert_eq!(base64_decode(&e).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm9vYg==").unwrap(), b"foob");
        assert!(base64_decode("Zm9v!").is_none());
    }

    #[test]
    fn keys_round_trip_and_are_deterministic() {
        let id = Identity::from_parts([7; 32], "0123456789abcdef0123456789abcdef").unwrap();
        let text = id.openssh_private("root@web1");
        assert_eq!(text, id.openssh_private("root@web1"));
        let (seed, comment) = parse_private(&text).unwrap();
        assert_eq!(seed, [7; 32]);
        assert_eq!(comment, "root@web1");
        assert_eq!(parse_public_line(&id.openssh_public("x")).unwrap(), id.public_key());
        assert_eq!(id.id.len(), 16);
        assert!(!format!("{id:?}").contains("BEGIN"));
        assert!(Identity::from_parts([7; 32], "00000000000000000000000000000000").is_none());
        assert!(Identity::from_parts([7; 32], "0123456789ABCDEF0123456789abcdef").is_none());
    }

    #[test]
    fn ssh_keygen_reads_the_keys() {
        if std::process::Command::new("ssh-keygen").arg("-?").output().is_err() {
            eprintln!("ssh-keygen not installed; skipped");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let id = Identity::generate().unwrap();
        let key = t.path().join("key");
        std::fs::write(&key, id.openssh_private("root@web1")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        assert_eq!(parse_public_line(&line).unwrap(), id.public_key());
        std::fs::write(t.path().join("key.pub"), id.openssh_public("root@web1")).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(t.path().join("key.pub"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let fp = String::from_utf8(out.stdout).unwrap();
        assert!(fp.contains(&id.fingerprint()), "{fp} vs {}", id.fingerprint());
        assert!(fp.contains("(ED25519)"));
        // And a key made by ssh-keygen is read by us.
        let theirs = t.path().join("theirs");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "made-by-openssh", "-f"])
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(st.success());
        let (seed, comment) = parse_private(&std::fs::read_to_string(&theirs).unwrap()).unwrap();
        assert_eq!(comment, "made-by-openssh");
        let pub_line = std::fs::read_to_string(theirs.with_extension("pub")).unwrap();
        assert_eq!(parse_public_line(&pub_line).unwrap(), public_from_seed(&seed));
    }

    #[test]
    fn created_once_completed_after_a_crash_never_regenerated() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_state_dir(t.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join(STATE_DIR)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(load(&dir).unwrap().is_none());
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a, b);
        assert_eq!(load(&dir).unwrap().unwrap(), a);
        let mid = std::fs::read_to_string(t.path().join(STATE_DIR).join(MACHINE_ID_FILE)).unwrap();
        assert_eq!(mid, format!("{}\n", a.machine_id));
        assert_eq!(&mid[12..13], "4");
        // The public key and the machine-id lost (a crash before they were written):
        // the key stays, the public half is derived again.
        std::fs::remove_file(t.path().join(STATE_DIR).join(PUB_FILE)).unwrap();
        std::fs::write(t.path().join(STATE_DIR).join("ssh_host_ed25519_key.pub.tmp"), "half").unwrap();
        let c = load_or_create(&dir).unwrap();
        assert_eq!(c, a);
        let pub_line = std::fs::read_to_string(t.path().join(STATE_DIR).join(PUB_FILE)).unwrap();
        assert_eq!(pub_line, a.openssh_public(STATE_COMMENT));
        // A stale public key is rewritten from the private one.
        std::fs::write(
            t.path().join(STATE_DIR).join(PUB_FILE),
            Identity::generate().unwrap().openssh_public("x"),
        )
        .unwrap();
        assert_eq!(load_or_create(&dir).unwrap(), a);
        assert_eq!(std::fs::read_to_string(t.path().join(STATE_DIR).join(PUB_FILE)).unwrap(), pub_line);
        // Files are private.
        let m = std::fs::metadata(t.path().join(STATE_DIR).join(KEY_FILE)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // A damaged key is invalid, never absent: `load` names it; at boot it is
        // set aside (kept as .bad-N) and a new identity made, never a boot loop.
        let sd = t.path().join(STATE_DIR);
        std::fs::write(sd.join(KEY_FILE), "garbage").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains(KEY_FILE), "{e}");
        let n = load_or_create(&dir).unwrap();
        assert_ne!(n.public_key(), a.public_key());
        assert_eq!(n.machine_id, a.machine_id);
        assert_eq!(std::fs::read_to_string(sd.join(format!("{KEY_FILE}.bad-1"))).unwrap(), "garbage");
        std::fs::write(sd.join(MACHINE_ID_FILE), "nope\n").unwrap();
        let m = load_or_create(&dir).unwrap();
        assert_ne!(m.machine_id, a.machine_id);
        assert_eq!(m.public_key(), n.public_key());
        assert_eq!(std::fs::read_to_string(sd.join(format!("{MACHINE_ID_FILE}.bad-1"))).unwrap(), "nope\n");
        // A FIFO or a symlink in their place: set aside too, without blocking.
        std::fs::remove_file(sd.join(MACHINE_ID_FILE)).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, sd.join(MACHINE_ID_FILE), rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        std::fs::remove_file(sd.join(KEY_FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", sd.join(KEY_FILE)).unwrap();
        load_or_create(&dir).unwrap();
        assert!(sd.join(format!("{MACHINE_ID_FILE}.bad-2")).exists() && sd.join(format!("{KEY_FILE}.bad-2")).exists());
        let _ = RealDir::open(t.path(), false).unwrap();
    }
}
