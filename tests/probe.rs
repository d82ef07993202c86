//! Superblock probe against images made by the real mkfs tools, plus garbage,
//! short buffers and random bytes (which must never panic).

use std::path::{Path, PathBuf};
use std::process::Command;

use hninit::sys::probe::{probe, probe_path, FsType, Superblock, PROBE_LEN};

/// Finds a tool in PATH or the sbin directories; `None` (and a note) when absent.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/sbin", "/usr/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("note: {name} not installed, skipping this case");
    }
    found
}

fn run(tool: &Path, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .expect("spawn mkfs tool");
    assert!(
        out.status.success(),
        "{} {:?} failed: {}",
        tool.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sparse_file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn probed(path: &Path) -> Superblock {
    probe_path(path)
        .unwrap()
        .unwrap_or_else(|| panic!("nothing found in {}", path.display()))
}

fn check_ext(mkfs: &str, want: FsType) {
    let Some(t) = tool(mkfs) else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "fs.img", 8 << 20);
    let uuid = "0b6a5d2c-7f3e-4a1b-9c8d-1e2f3a4b5c6d";
    run(
        &t,
        &["-q", "-F", "-L", "lbl", "-U", uuid, img.to_str().unwrap()],
    );
    let sb = probed(&img);
    assert_eq!(sb.fstype, want);
    assert_eq!(sb.label.as_deref(), Some("lbl"));
    assert_eq!(sb.uuid.as_deref(), Some(uuid));
    assert_eq!(sb.fstype.mount_type(), "ext4");
}

#[test]
fn ext2() {
    check_ext("mkfs.ext2", FsType::Ext2);
}

#[test]
fn ext3() {
    check_ext("mkfs.ext3", FsType::Ext3);
}

#[test]
fn ext4() {
    check_ext("mkfs.ext4", FsType::Ext4);
}

#[test]
fn ext4_without_label_has_no_label() {
    let Some(t) = tool("mkfs.ext4") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "fs.img", 8 << 20);
    run(&t, &["-q", "-F", img.to_str().unwrap()]);
    let sb = probed(&img);
    assert_eq!(sb.fstype, FsType::Ext4);
    assert_eq!(sb.label, None);
    assert!(sb.uuid.is_some());
}

#[test]
fn btrfs() {
    let Some(t) = tool("mkfs.btrfs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "fs.img", 128 << 20);
    let uuid = "5e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b";
    run(
        &t,
        &[
            "-q",
            "-f",
            "-L",
            "hostpart",
            "-U",
            uuid,
            img.to_str().unwrap(),
        ],
    );
    let sb = probed(&img);
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Btrfs,
            label: Some("hostpart".into()),
            uuid: Some(uuid.into())
        }
    );
    assert_eq!(sb.fstype.mount_type(), "btrfs");
}

#[test]
fn xfs() {
    let Some(t) = tool("mkfs.xfs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "fs.img", 320 << 20);
    let uuid = "a1b2c3d4-e5f6-4789-abcd-ef0123456789";
    let m = format!("uuid={uuid}");
    run(
        &t,
        &["-q", "-f", "-L", "xfslbl", "-m", &m, img.to_str().unwrap()],
    );
    let sb = probed(&img);
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Xfs,
            label: Some("xfslbl".into()),
            uuid: Some(uuid.into())
        }
    );
}

#[test]
fn vfat16() {
    let Some(t) = tool("mkfs.vfat") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "fs.img", 32 << 20);
    run(
        &t,
        &[
            "-F",
            "16",
            "-n",
            "EFI-BOOT",
            "-i",
            "1234abcd",
            img.to_str().unwrap(),
        ],
    );
    let sb = probed(&img);
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Vfat,
            label: Some("EFI-BOOT".into()),
            uuid: Some("1234-ABCD".into())
        }
    );
    assert_eq!(sb.fstype.mount_type(), "vfat");
}

#[test]
fn vfat32() {
    let Some(t) = tool("mkfs.vfat") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "fs.img", 64 << 20);
    run(
        &t,
        &[
            "-F",
            "32",
            "-n",
            "LABEL",
            "-i",
            "DEADBEEF",
            img.to_str().unwrap(),
        ],
    );
    let sb = probed(&img);
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Vfat,
            label: Some("LABEL".into()),
            uuid: Some("DEAD-BEEF".into())
        }
    );
}

#[test]
fn vfat_without_label_is_none() {
    let Some(t) = tool("mkfs.vfat") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "fs.img", 8 << 20);
    run(&t, &["-i", "00C0FFEE", img.to_str().unwrap()]);
    let sb = probed(&img);
    assert_eq!(sb.fstype, FsType::Vfat);
    assert_eq!(sb.label, None, "\"NO NAME\" is no label");
    assert_eq!(sb.uuid.as_deref(), Some("00C0-FFEE"));
}

#[test]
fn swap() {
    let Some(t) = tool("mkswap") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = sparse_file(dir.path(), "swap.img", 4 << 20);
    let uuid = "11111111-2222-4333-8444-555555555555";
    run(&t, &["-L", "swap", "-U", uuid, img.to_str().unwrap()]);
    let sb = probed(&img);
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Swap,
            label: Some("swap".into()),
            uuid: Some(uuid.into())
        }
    );
    assert_eq!(sb.fstype.mount_type(), "swap");
    assert_eq!(sb.fstype.to_string(), "swap");
}

#[test]
fn squashfs() {
    let Some(t) = tool("mksquashfs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello"), b"world").unwrap();
    let img = dir.path().join("fs.sqfs");
    run(
        &t,
        &[
            src.to_str().unwrap(),
            img.to_str().unwrap(),
            "-noappend",
            "-quiet",
            "-no-progress",
        ],
    );
    let sb = probed(&img);
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Squashfs,
            label: None,
            uuid: None
        }
    );
}

#[test]
fn erofs() {
    let Some(t) = tool("mkfs.erofs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello"), b"world").unwrap();
    let img = dir.path().join("fs.erofs");
    let uuid = "deadbeef-0000-4000-8000-0123456789ab";
    // erofs-utils 1.5 (Debian 12) has no -L: check the label field by patching it.
    let u = format!("-U{uuid}");
    run(&t, &[&u, img.to_str().unwrap(), src.to_str().unwrap()]);
    let sb = probed(&img);
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Erofs,
            label: None,
            uuid: Some(uuid.into())
        }
    );
    let mut head = std::fs::read(&img).unwrap();
    head[1024 + 64..1024 + 67].copy_from_slice(b"ero");
    assert_eq!(probe(&head).unwrap().label.as_deref(), Some("ero"));
}

/// A FAT boot sector left in front of another filesystem must not win.
#[test]
fn distinctive_magic_beats_stale_fat_boot_sector() {
    let (Some(vfat), Some(mkswap)) = (tool("mkfs.vfat"), tool("mkswap")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fat = sparse_file(dir.path(), "fat.img", 8 << 20);
    run(&vfat, &["-n", "OLD", fat.to_str().unwrap()]);
    let swap = sparse_file(dir.path(), "swap.img", 4 << 20);
    run(&mkswap, &["-L", "new", swap.to_str().unwrap()]);
    let mut head = std::fs::read(&swap).unwrap();
    head.truncate(PROBE_LEN);
    let boot = std::fs::read(&fat).unwrap();
    head[..512].copy_from_slice(&boot[..512]);
    let sb = probe(&head).unwrap();
    assert_eq!(sb.fstype, FsType::Swap);
    assert_eq!(sb.label.as_deref(), Some("new"));
}

#[test]
fn short_device_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny");
    std::fs::write(&p, b"hsqs and nothing else").unwrap();
    assert_eq!(probed(&p).fstype, FsType::Squashfs);
    std::fs::write(&p, b"").unwrap();
    assert_eq!(probe_path(&p).unwrap(), None);
    assert!(probe_path(&dir.path().join("absent")).is_err());
}

#[test]
fn garbage_zeroes_and_short_buffers_are_none() {
    assert_eq!(probe(&[]), None);
    assert_eq!(probe(&[0u8; 10]), None);
    assert_eq!(probe(&vec![0u8; PROBE_LEN]), None);
    assert_eq!(probe(&vec![0xFFu8; PROBE_LEN]), None);
    let text: Vec<u8> = b"Lorem ipsum dolor sit amet. "
        .iter()
        .copied()
        .cycle()
        .take(PROBE_LEN)
        .collect();
    assert_eq!(probe(&text), None);
    // 0x55AA alone, with a zero BPB, is no FAT.
    let mut mbr = vec![0u8; 512];
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    assert_eq!(probe(&mbr), None);
    // XFSB with a silly block size is no XFS.
    let mut x = vec![0u8; 512];
    x[..4].copy_from_slice(b"XFSB");
    x[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(probe(&x), None);
}

#[test]
fn ext_magic_just_inside_a_short_buffer() {
    // Magic present but the feature words are cut off: no match, no panic.
    let mut b = vec![0u8; 1082];
    b[1080] = 0x53;
    b[1081] = 0xEF;
    assert_eq!(probe(&b), None);
    let mut b = vec![0u8; 1200];
    b[1080] = 0x53;
    b[1081] = 0xEF;
    let sb = probe(&b).unwrap();
    assert_eq!(
        sb,
        Superblock {
            fstype: FsType::Ext2,
            label: None,
            uuid: None
        }
    );
}

#[test]
fn names_and_display() {
    let all = [
        (FsType::Ext2, "ext2", "ext4"),
        (FsType::Ext3, "ext3", "ext4"),
        (FsType::Ext4, "ext4", "ext4"),
        (FsType::Btrfs, "btrfs", "btrfs"),
        (FsType::Xfs, "xfs", "xfs"),
        (FsType::Vfat, "vfat", "vfat"),
        (FsType::Swap, "swap", "swap"),
        (FsType::Squashfs, "squashfs", "squashfs"),
        (FsType::Erofs, "erofs", "erofs"),
    ];
    for (t, name, mount) in all {
        assert_eq!(t.name(), name);
        assert_eq!(t.to_string(), name);
        assert_eq!(t.mount_type(), mount);
    }
}

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// Random bytes, random bytes with real magics planted, and every truncation
/// of real images never panic.
#[test]
fn random_bytes_and_truncations_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let plants: [(usize, &[u8]); 9] = [
        (65600, b"_BHRfS_M"),
        (0, b"XFSB"),
        (1080, &[0x53, 0xEF]),
        (4086, b"SWAPSPACE2"),
        (4086, b"SWAP-SPACE"),
        (0, b"hsqs"),
        (1024, &[0xE2, 0xE1, 0xF5, 0xE0]),
        (510, &[0x55, 0xAA]),
        (65526, b"SWAPSPACE2"),
    ];
    let mut buf = vec![0u8; PROBE_LEN];
    for round in 0..3000 {
        rng.fill(&mut buf);
        let (off, magic) = plants[round % plants.len()];
        buf[off..off + magic.len()].copy_from_slice(magic);
        if round % 3 == 0 {
            // A plausible FAT BPB too.
            buf[11..13].copy_from_slice(&512u16.to_le_bytes());
            buf[13] = 1 << (rng.next() % 8);
            buf[21] = 0xF8;
        }
        let len = (rng.next() as usize) % (PROBE_LEN + 1);
        let _ = probe(&buf[..len]);
        let _ = probe(&buf);
    }

    // Every truncation of a real image (at interesting boundaries and randomly).
    let dir = tempfile::tempdir().unwrap();
    let mut heads = Vec::new();
    if let Some(t) = tool("mkfs.ext4") {
        let img = sparse_file(dir.path(), "e.img", 8 << 20);
        run(&t, &["-q", "-F", "-L", "x", img.to_str().unwrap()]);
        heads.push(std::fs::read(&img).unwrap()[..PROBE_LEN].to_vec());
    }
    if let Some(t) = tool("mkfs.vfat") {
        let img = sparse_file(dir.path(), "f.img", 64 << 20);
        run(&t, &["-F", "32", img.to_str().unwrap()]);
        heads.push(std::fs::read(&img).unwrap()[..PROBE_LEN].to_vec());
    }
    for head in &heads {
        for len in (0..=PROBE_LEN).step_by(7) {
            let _ = probe(&head[..len]);
        }
        let mut flipped = head.clone();
        for _ in 0..2000 {
            let i = (rng.next() as usize) % flipped.len();
            flipped[i] = rng.next() as u8;
            let _ = probe(&flipped);
        }
    }
}
