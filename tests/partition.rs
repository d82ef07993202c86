//! PARTUUID from GPT (made by sgdisk, and a hand-built 4 KiB-sector one) and MBR
//! (made by sfdisk, including logical partitions), checked against the values
//! passed and against `partx`; garbage is `Ok(None)` and never panics.

use std::fs::File;
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hninit::sys::partition::{parse_gpt_guid, partuuid};

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

fn run(tool: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {:?} failed: {}",
        tool.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn disk(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("disk.img");
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn uuid_of(path: &Path, n: u32) -> Option<String> {
    partuuid(&mut File::open(path).unwrap(), n).unwrap()
}

/// `partx --show` as the reference: partition number → UUID.
fn partx(path: &Path) -> Option<Vec<(u32, String)>> {
    let t = tool("partx")?;
    let out = run(
        &t,
        &[
            "--show",
            "--noheadings",
            "-o",
            "NR,UUID",
            path.to_str().unwrap(),
        ],
        None,
    );
    Some(
        out.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.parse().ok()?, w.next()?.to_string()))
            })
            .collect(),
    )
}

#[test]
fn guid_formatting() {
    // The EFI system partition type GUID as stored on disk.
    let b = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];
    assert_eq!(parse_gpt_guid(&b), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    assert_eq!(
        parse_gpt_guid(&[0; 16]),
        "00000000-0000-0000-0000-000000000000"
    );
}

#[test]
fn gpt_from_sgdisk() {
    let Some(sgdisk) = tool("sgdisk") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), 16 << 20);
    let g1 = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    let g3 = "6A0B2C1D-0E9F-4A8B-B7C6-D5E4F3A2B1C0";
    let p = img.to_str().unwrap();
    run(
        &sgdisk,
        &[
            "-n",
            "1:2048:+1M",
            "-u",
            &format!("1:{g1}"),
            "-n",
            "3:0:+1M",
            "-u",
            &format!("3:{g3}"),
            p,
        ],
        None,
    );
    assert_eq!(uuid_of(&img, 1), Some(g1.to_lowercase()));
    assert_eq!(uuid_of(&img, 2), None, "empty slot");
    assert_eq!(uuid_of(&img, 3), Some(g3.to_lowercase()));
    assert_eq!(uuid_of(&img, 0), None);
    assert_eq!(uuid_of(&img, 129), None, "beyond the 128 entries");
    assert_eq!(uuid_of(&img, u32::MAX), None);
    if let Some(reference) = partx(&img) {
        assert_eq!(reference.len(), 2);
        for (n, u) in reference {
            assert_eq!(uuid_of(&img, n), Some(u));
        }
    }

    // Primary header destroyed: the backup at the last LBA still answers.
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.seek(SeekFrom::Start(512)).unwrap();
    f.write_all(&[0u8; 512]).unwrap();
    drop(f);
    assert_eq!(uuid_of(&img, 1), Some(g1.to_lowercase()));
    assert_eq!(uuid_of(&img, 3), Some(g3.to_lowercase()));
}

#[test]
fn gpt_with_corrupt_crc_is_not_trusted() {
    let Some(sgdisk) = tool("sgdisk") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), 8 << 20);
    run(&sgdisk, &["-n", "1:2048:+1M", img.to_str().unwrap()], None);
    let mut bytes = std::fs::read(&img).unwrap();
    assert!(partuuid(&mut Cursor::new(&bytes), 1).unwrap().is_some());
    // Flip a byte of the first entry's GUID in both arrays: both CRCs now fail.
    bytes[1024 + 20] ^= 0xFF;
    let len = bytes.len();
    let backup_array = len - 512 - 128 * 128;
    bytes[backup_array + 20] ^= 0xFF;
    assert_eq!(partuuid(&mut Cursor::new(&bytes), 1).unwrap(), None);
}

#[test]
fn mbr_from_sfdisk() {
    let Some(sfdisk) = tool("sfdisk") else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), 16 << 20);
    let script = "label: dos\nlabel-id: 0x1234abcd\n\
                  start=2048, size=2048, type=83\n\
                  start=4096, size=2048, type=83\n\
                  start=6144, size=20480, type=5\n\
                  start=8192, size=2048, type=83\n\
                  start=12288, size=2048, type=82\n";
    run(&sfdisk, &["-q", img.to_str().unwrap()], Some(script));
    assert_eq!(uuid_of(&img, 1).as_deref(), Some("1234abcd-01"));
    assert_eq!(uuid_of(&img, 2).as_deref(), Some("1234abcd-02"));
    assert_eq!(
        uuid_of(&img, 3).as_deref(),
        Some("1234abcd-03"),
        "the extended partition itself"
    );
    assert_eq!(uuid_of(&img, 4), None, "unused primary slot");
    assert_eq!(uuid_of(&img, 5).as_deref(), Some("1234abcd-05"));
    assert_eq!(uuid_of(&img, 6).as_deref(), Some("1234abcd-06"));
    assert_eq!(uuid_of(&img, 7), None);
    if let Some(reference) = partx(&img) {
        assert_eq!(reference.len(), 5);
        for (n, u) in reference {
            assert_eq!(uuid_of(&img, n), Some(u));
        }
    }
}

#[test]
fn mbr_partition_numbers_are_hex() {
    // Built by hand: 17 logical partitions, so number 16 prints as "10".
    let mut d = vec![0u8; 64 << 10 << 4];
    let sig = 0xCAFEF00Du32;
    d[440..444].copy_from_slice(&sig.to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xAA;
    let ext_start = 64u32;
    let put = |d: &mut Vec<u8>, sector: u32, slot: usize, ptype: u8, start: u32, size: u32| {
        let o = sector as usize * 512 + 446 + slot * 16;
        d[o + 4] = ptype;
        d[o + 8..o + 12].copy_from_slice(&start.to_le_bytes());
        d[o + 12..o + 16].copy_from_slice(&size.to_le_bytes());
        let s = sector as usize * 512;
        d[s + 510] = 0x55;
        d[s + 511] = 0xAA;
    };
    put(&mut d, 0, 0, 0x05, ext_start, 20 * 64);
    for i in 0..17u32 {
        let ebr = ext_start + i * 64;
        put(&mut d, ebr, 0, 0x83, 8, 16);
        if i < 16 {
            put(&mut d, ebr, 1, 0x05, (i + 1) * 64, 64);
        }
    }
    let mut c = Cursor::new(d);
    assert_eq!(partuuid(&mut c, 1).unwrap().as_deref(), Some("cafef00d-01"));
    assert_eq!(partuuid(&mut c, 5).unwrap().as_deref(), Some("cafef00d-05"));
    assert_eq!(
        partuuid(&mut c, 16).unwrap().as_deref(),
        Some("cafef00d-10")
    );
    assert_eq!(
        partuuid(&mut c, 21).unwrap().as_deref(),
        Some("cafef00d-15")
    );
    assert_eq!(partuuid(&mut c, 22).unwrap(), None);
}

#[test]
fn looping_ebr_chain_terminates() {
    let mut d = vec![0u8; 1 << 20];
    d[440..444].copy_from_slice(&1u32.to_le_bytes());
    let entry = |d: &mut Vec<u8>, sector: usize, slot: usize, ptype: u8, start: u32, size: u32| {
        let o = sector * 512 + 446 + slot * 16;
        d[o + 4] = ptype;
        d[o + 8..o + 12].copy_from_slice(&start.to_le_bytes());
        d[o + 12..o + 16].copy_from_slice(&size.to_le_bytes());
        d[sector * 512 + 510] = 0x55;
        d[sector * 512 + 511] = 0xAA;
    };
    entry(&mut d, 0, 0, 0x0F, 100, 1000);
    entry(&mut d, 100, 0, 0x83, 1, 10);
    entry(&mut d, 100, 1, 0x05, 0, 10); // links to itself
    let mut c = Cursor::new(d);
    assert_eq!(partuuid(&mut c, 5).unwrap().as_deref(), Some("00000001-05"));
    assert_eq!(partuuid(&mut c, 300).unwrap(), None);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A minimal GPT for 4096-byte sectors, built by hand.
fn gpt_4k(guids: &[(u32, [u8; 16])]) -> Vec<u8> {
    const SS: usize = 4096;
    let lbas = 64usize;
    let mut d = vec![0u8; SS * lbas];
    // Protective MBR.
    d[446 + 4] = 0xEE;
    d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    d[446 + 12..446 + 16].copy_from_slice(&((lbas - 1) as u32).to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xAA;
    // Entries at LBA 2: 128 × 128 bytes.
    let mut array = vec![0u8; 128 * 128];
    for (n, guid) in guids {
        let e = (*n as usize - 1) * 128;
        array[e..e + 16].copy_from_slice(&[0xAF; 16]); // some non-zero type
        array[e + 16..e + 32].copy_from_slice(guid);
        array[e + 32..e + 40].copy_from_slice(&10u64.to_le_bytes());
        array[e + 40..e + 48].copy_from_slice(&11u64.to_le_bytes());
    }
    d[2 * SS..2 * SS + array.len()].copy_from_slice(&array);
    let mut h = vec![0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[32..40].copy_from_slice(&((lbas - 1) as u64).to_le_bytes());
    h[40..48].copy_from_slice(&6u64.to_le_bytes());
    h[48..56].copy_from_slice(&((lbas - 6) as u64).to_le_bytes());
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
    let c = crc32(&h);
    h[16..20].copy_from_slice(&c.to_le_bytes());
    d[SS..SS + 92].copy_from_slice(&h);
    d
}

#[test]
fn gpt_with_4k_sectors() {
    let g = [
        0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];
    let d = gpt_4k(&[(2, g)]);
    let mut c = Cursor::new(d);
    assert_eq!(
        partuuid(&mut c, 2).unwrap().as_deref(),
        Some("00112233-4455-6677-8899-aabbccddeeff")
    );
    assert_eq!(partuuid(&mut c, 1).unwrap(), None);
}

#[test]
fn garbage_is_none() {
    let empty: Vec<u8> = Vec::new();
    assert_eq!(partuuid(&mut Cursor::new(&empty), 1).unwrap(), None);
    assert_eq!(
        partuuid(&mut Cursor::new(vec![0u8; 1 << 20]), 1).unwrap(),
        None
    );
    assert_eq!(
        partuuid(&mut Cursor::new(vec![0xFFu8; 1 << 20]), 1).unwrap(),
        None
    );
    // 0x55AA with a bad boot indicator: a FAT boot sector, not a table.
    let mut fat = vec![0x11u8; 4096];
    fat[510] = 0x55;
    fat[511] = 0xAA;
    assert_eq!(partuuid(&mut Cursor::new(fat), 1).unwrap(), None);
    // Protective MBR, no GPT anywhere.
    let mut pm = vec![0u8; 1 << 16];
    pm[446 + 4] = 0xEE;
    pm[446 + 12] = 1;
    pm[510] = 0x55;
    pm[511] = 0xAA;
    assert_eq!(partuuid(&mut Cursor::new(pm.clone()), 1).unwrap(), None);
    // "EFI PART" with absurd geometry.
    pm[512..520].copy_from_slice(b"EFI PART");
    pm[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(partuuid(&mut Cursor::new(pm), 1).unwrap(), None);
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = Rng(42);
    let base = gpt_4k(&[(1, [7; 16])]);
    let mut mbr = vec![0u8; 1 << 16];
    mbr[446 + 4] = 0x05;
    mbr[446 + 8] = 8;
    mbr[446 + 12] = 64;
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    for round in 0..3000 {
        let mut d = if round % 2 == 0 {
            base.clone()
        } else {
            mbr.clone()
        };
        for _ in 0..(rng.next() % 16) {
            let i = (rng.next() as usize) % d.len().min(20000);
            d[i] = rng.next() as u8;
        }
        let cut = (rng.next() as usize) % (d.len() + 1);
        d.truncate(cut);
        let n = (rng.next() % 300) as u32;
        let _ = partuuid(&mut Cursor::new(d), n).unwrap();
    }
}
