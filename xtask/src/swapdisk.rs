//! Gandi-style swap disks for tests: a Linux swap area (made by `mkswap`) that
//! carries the host configuration as a ustar archive at byte 524288, member
//! `gandi/config` (the JSON), as Gandi's Xen platform hands it to a new VM.
//!
//! Where the archive lives: the swap header is the first 4 KiB page; the
//! archive sits inside the swap's *usable* area (from page 128 on), so the first
//! `swapon` of the guest may overwrite it. That is Gandi's arrangement too:
//! the config is read once, on the first boot and before any swap is activated,
//! and hninit wipes the archive (zeroes) after a successful instantiation; the
//! swap header (signature `SWAPSPACE2`, label, UUID) stays intact so the device
//! is still a valid swap area afterwards. [`inspect_swap_disk`] reads both back.

use crate::util::{self, cmd};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Byte offset of the config archive on the swap device (Gandi's: 1024 sectors).
pub const CONFIG_OFFSET: u64 = 524_288;
/// The archive member holding the JSON configuration.
pub const CONFIG_MEMBER: &str = "gandi/config";
/// Offset of the swap signature `SWAPSPACE2` (end of the first 4 KiB page).
pub const SWAP_MAGIC_OFFSET: u64 = 4086;
/// The swap signature of `mkswap` (swap header version 1).
pub const SWAP_MAGIC: &[u8] = b"SWAPSPACE2";
/// Offset of the 16-byte volume label in the swap header.
const SWAP_LABEL_OFFSET: u64 = 1052;
/// Offset of the 16-byte UUID in the swap header.
const SWAP_UUID_OFFSET: u64 = 1036;
const BLOCK: usize = 512;

/// What [`gandi_swap_disk`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapDisk {
    pub size_bytes: u64,
    /// Where the archive starts ([`CONFIG_OFFSET`]).
    pub archive_offset: u64,
    /// Archive length in bytes (headers, data, the two zero end blocks).
    pub archive_len: u64,
    /// The swap area's UUID as `mkswap` chose it.
    pub swap_uuid: String,
}

/// Writes the swap disk file `out` (replaced) of `size_mib` MiB: `mkswap`
/// (with `-L label` when given) and the ustar archive holding `gandi/`
/// and `gandi/config` = `config_json` at [`CONFIG_OFFSET`].
pub fn gandi_swap_disk(
    out: &Path,
    size_mib: u64,
    label: Option<&str>,
    config_json: &[u8],
) -> Result<SwapDisk> {
    let archive = ustar_archive(&[("gandi/", None), (CONFIG_MEMBER, Some(config_json))])?;
    let size_bytes = size_mib << 20;
    // The header page, the archive, and some room after it for real swapping.
    if CONFIG_OFFSET + archive.len() as u64 + (64 << 10) > size_bytes {
        bail!(
            "a swap disk of {size_mib} MiB cannot hold a {} byte config archive at byte {CONFIG_OFFSET}",
            archive.len()
        );
    }
    if let Some(l) = label {
        if l.len() > 16 {
            bail!("swap label {l:?} is longer than 16 bytes");
        }
    }
    util::remove_any(out)?;
    if let Some(d) = out.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    {
        let f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        // mkswap warns about world-readable swap; a swap holding secrets should be 0600 anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.set_len(size_bytes)?;
    }
    let mut c = cmd("mkswap");
    c.arg("-q");
    if let Some(l) = label {
        c.args(["-L", l]);
    }
    c.arg(out);
    util::run(&mut c).with_context(|| format!("making the swap area in {}", out.display()))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    f.seek(SeekFrom::Start(CONFIG_OFFSET))?;
    f.write_all(&archive)
        .with_context(|| format!("writing the config archive into {}", out.display()))?;
    f.sync_all()?;
    drop(f);
    let st = inspect_swap_disk(out)?;
    if !st.swap_signature {
        bail!("{}: mkswap left no swap signature", out.display());
    }
    Ok(SwapDisk {
        size_bytes,
        archive_offset: CONFIG_OFFSET,
        archive_len: archive.len() as u64,
        swap_uuid: st.swap_uuid,
    })
}

/// A ustar archive of `members`: `(name, None)` is a directory (mode 0755),
/// `(name, Some(data))` a regular file (mode 0600), owned by root, ending
/// with the two zero blocks.
pub fn ustar_archive(members: &[(&str, Option<&[u8]>)]) -> Result<Vec<u8>> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = Vec::new();
    for (name, data) in members {
        let (mode, size, kind) = match data {
            None => (0o755, 0, b'5'),
            Some(d) => (0o600, d.len() as u64, b'0'),
        };
        out.extend_from_slice(&ustar_header(name, mode, size, mtime, kind)?);
        if let Some(d) = data {
            out.extend_from_slice(d);
            let pad = (BLOCK - d.len() % BLOCK) % BLOCK;
            out.resize(out.len() + pad, 0);
        }
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        bail!("{value} does not fit a {digits}-digit ustar field");
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

fn ustar_header(name: &str, mode: u32, size: u64, mtime: u64, kind: u8) -> Result<[u8; BLOCK]> {
    let mut h = [0u8; BLOCK];
    let (prefix, base) = if name.len() <= 100 {
        ("", name)
    } else {
        let cut = name[..name.len().min(156)]
            .rfind('/')
            .filter(|&i| i <= 155 && name.len() - i - 1 <= 100)
            .with_context(|| format!("ustar cannot hold the name {name:?}"))?;
        (&name[..cut], &name[cut + 1..])
    };
    h[..base.len()].copy_from_slice(base.as_bytes());
    octal(&mut h[100..108], mode as u64)?;
    octal(&mut h[108..116], 0)?;
    octal(&mut h[116..124], 0)?;
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], mtime)?;
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], 0)?;
    octal(&mut h[337..345], 0)?;
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// A swap disk file as found (e.g. after a boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapDiskState {
    /// `SWAPSPACE2` at byte 4086.
    pub swap_signature: bool,
    /// The swap label ("" when none).
    pub swap_label: String,
    pub swap_uuid: String,
    /// `gandi/config` when a readable ustar archive is at [`CONFIG_OFFSET`].
    pub config: Option<Vec<u8>>,
    /// How many bytes from [`CONFIG_OFFSET`] on are zero (counted up to 4 MiB
    /// or the end of the file): at least the archive's length once wiped.
    pub zero_bytes_at_config: u64,
}

/// Reads the swap header and the config archive back from a swap disk file.
pub fn inspect_swap_disk(path: &Path) -> Result<SwapDiskState> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut page = vec![0u8; 4096];
    let n = read_at(&mut f, 0, &mut page)?;
    page.truncate(n);
    let swap_signature = page.len() >= 4096
        && &page[SWAP_MAGIC_OFFSET as usize..SWAP_MAGIC_OFFSET as usize + 10] == SWAP_MAGIC;
    let (mut swap_label, mut swap_uuid) = (String::new(), String::new());
    if swap_signature {
        let l = &page[SWAP_LABEL_OFFSET as usize..SWAP_LABEL_OFFSET as usize + 16];
        let end = l.iter().position(|&b| b == 0).unwrap_or(16);
        swap_label = String::from_utf8_lossy(&l[..end]).into_owned();
        let u: [u8; 16] = page[SWAP_UUID_OFFSET as usize..SWAP_UUID_OFFSET as usize + 16]
            .try_into()
            .expect("16 bytes");
        swap_uuid = util::format_uuid(&u);
    }
    let window = (len.saturating_sub(CONFIG_OFFSET)).min(4 << 20) as usize;
    let mut area = vec![0u8; window];
    let n = read_at(&mut f, CONFIG_OFFSET, &mut area)?;
    area.truncate(n);
    let zero_bytes_at_config = area.iter().position(|&b| b != 0).unwrap_or(area.len()) as u64;
    Ok(SwapDiskState {
        swap_signature,
        swap_label,
        swap_uuid,
        config: ustar_member(&area, CONFIG_MEMBER),
        zero_bytes_at_config,
    })
}

fn read_at(f: &mut fs::File, off: u64, buf: &mut [u8]) -> Result<usize> {
    f.seek(SeekFrom::Start(off))?;
    Ok(crate::util::read_full(f, buf)?)
}

/// The data of member `name` in the ustar archive at the start of `ar`.
fn ustar_member(ar: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut off = 0;
    while off + BLOCK <= ar.len() {
        let h = &ar[off..off + BLOCK];
        if h.iter().all(|&b| b == 0) || &h[257..262] != b"ustar" {
            return None;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let (base, prefix) = (field(0..100), field(345..500));
        let full = if prefix.is_empty() {
            base
        } else {
            format!("{prefix}/{base}")
        };
        let size = u64::from_str_radix(field(124..136).trim(), 8).ok()? as usize;
        let start = off + BLOCK;
        if full == name {
            return ar.get(start..start + size).map(<[u8]>::to_vec);
        }
        off = start + size.div_ceil(BLOCK) * BLOCK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn archive_reads_back_with_tar() {
        let d = tempfile::tempdir().unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let ar = ustar_archive(&[
            ("gandi/", None),
            (CONFIG_MEMBER, Some(b"{\"vm_hostname\":\"x\"}\n")),
            (&long, Some(b"long")),
        ])
        .unwrap();
        assert_eq!(ar.len() % BLOCK, 0);
        let p = d.path().join("a.tar");
        fs::write(&p, &ar).unwrap();
        let list = util::run_stdout(Command::new("tar").arg("-tvf").arg(&p)).unwrap();
        assert!(list.contains("gandi/config"), "{list}");
        assert!(list.contains(&long), "{list}");
        let cat =
            util::run_stdout(Command::new("tar").arg("-xOf").arg(&p).arg(CONFIG_MEMBER)).unwrap();
        assert_eq!(cat, "{\"vm_hostname\":\"x\"}\n");
        assert_eq!(ustar_member(&ar, &long).unwrap(), b"long");
        assert_eq!(ustar_member(&ar, "nope"), None);
    }

    #[test]
    fn swap_disk_has_swap_and_config() {
        if util::find_program("mkswap").is_none() {
            eprintln!("mkswap missing; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("swap.img");
        let json = br#"{"vm_hostname": "t1"}"#;
        let sd = gandi_swap_disk(&p, 4, Some("swap"), json).unwrap();
        assert_eq!(sd.size_bytes, 4 << 20);
        assert_eq!(fs::metadata(&p).unwrap().len(), 4 << 20);
        let st = inspect_swap_disk(&p).unwrap();
        assert!(st.swap_signature);
        assert_eq!(st.swap_label, "swap");
        assert_eq!(st.swap_uuid, sd.swap_uuid);
        assert_eq!(st.config.as_deref(), Some(&json[..]));
        assert_eq!(st.zero_bytes_at_config, 0);
        // blkid agrees it is swap with that label.
        if let Some(blkid) = util::find_program("blkid") {
            let out = util::run_stdout(Command::new(blkid).arg("-p").arg(&p)).unwrap();
            assert!(
                out.contains("TYPE=\"swap\"") && out.contains("LABEL=\"swap\""),
                "{out}"
            );
        }
        // The archive is what `dd skip=1024 | tar` (Gandi's reader) sees.
        let mut f = fs::File::open(&p).unwrap();
        let mut ar = vec![0u8; sd.archive_len as usize];
        read_at(&mut f, CONFIG_OFFSET, &mut ar).unwrap();
        let t = d.path().join("x.tar");
        fs::write(&t, &ar).unwrap();
        let cat =
            util::run_stdout(Command::new("tar").arg("-xOf").arg(&t).arg(CONFIG_MEMBER)).unwrap();
        assert_eq!(cat.as_bytes(), json);

        // Wiped the way hninit does: zeroes over the archive, header intact.
        let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(CONFIG_OFFSET)).unwrap();
        f.write_all(&vec![0u8; sd.archive_len as usize]).unwrap();
        drop(f);
        let st = inspect_swap_disk(&p).unwrap();
        assert!(st.swap_signature && st.config.is_none());
        assert!(st.zero_bytes_at_config >= sd.archive_len);

        // No label; too small a disk is refused.
        let q = d.path().join("nolabel.img");
        gandi_swap_disk(&q, 2, None, json).unwrap();
        assert_eq!(inspect_swap_disk(&q).unwrap().swap_label, "");
        assert!(gandi_swap_disk(&q, 0, None, json).is_err());
    }

    /// The disk as hninit's config source reads and wipes it.
    #[test]
    fn hninit_reads_and_wipes_it() {
        if util::find_program("mkswap").is_none() || util::find_program("openssl").is_none() {
            eprintln!("mkswap/openssl missing; skipping");
            return;
        }
        use hninit::config::source::{read_device_archive, Origin};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("swap.img");
        let hash = util::run_stdout(Command::new("openssl").args(["passwd", "-6", "pw"]))
            .unwrap()
            .trim()
            .to_string();
        let json = format!(
            r#"{{"vm_hostname": "e2e-host", "nameservers": ["10.0.2.3"],
                "vif": [{{"vif_number": 0, "pna": [{{"pna_address": "10.0.2.15",
                  "pbn": {{"pbn_network": "10.0.2.0/24", "pbn_gateway": "10.0.2.2"}}}}]}}],
                "vm_conf": {{"user": "admin", "password": "{hash}",
                  "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILk8jHDcGJtDF7OmqdGHA5EeLclOoNJlYg6fX7DMKhRX t"}}}}"#
        );
        let sd = gandi_swap_disk(&p, 8, Some("swap"), json.as_bytes()).unwrap();
        let found = read_device_archive(&p, CONFIG_OFFSET, Origin::SwapDevice, "")
            .unwrap()
            .expect("hninit finds the archive");
        assert_eq!(found.parsed.config.vm_hostname, "e2e-host");
        assert!(
            found.parsed.warnings.is_empty(),
            "{:?}",
            found.parsed.warnings
        );
        assert_eq!(
            found.source.wipe_range(),
            Some((CONFIG_OFFSET, sd.archive_len))
        );
        assert_eq!(found.source.wipe().unwrap(), sd.archive_len);
        let st = inspect_swap_disk(&p).unwrap();
        assert!(st.swap_signature && st.swap_label == "swap" && st.swap_uuid == sd.swap_uuid);
        assert!(st.config.is_none() && st.zero_bytes_at_config >= sd.archive_len);
    }
}
