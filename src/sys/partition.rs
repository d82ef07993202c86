//! Partition identity that sysfs does not show: the `PARTUUID` of partition *n* of
//! a disk, read from its GPT (unique partition GUID) or MBR (disk signature and
//! partition number), formatted as the kernel and `blkid` print it. The table
//! parsing is pure and bounded; garbage yields `Ok(None)`, never a panic.

use std::io::{self, Read, Seek, SeekFrom};

/// Most GPT entries we accept in a table (real tables have 128).
const MAX_GPT_ENTRIES: u32 = 1024;
/// Largest GPT entry we accept (real entries are 128 bytes).
const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// Most logical partitions followed along an extended partition's chain.
const MAX_LOGICAL: u32 = 256;

/// Formats a GPT GUID (first three fields little-endian on disk) as the
/// canonical lower-case string, e.g. `c12a7328-f81f-11d2-ba4b-00a0c93ec93b`.
pub fn parse_gpt_guid(bytes: &[u8; 16]) -> String {
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = *bytes;
    let mut s = format!("{a3:02x}{a2:02x}{a1:02x}{a0:02x}-{b1:02x}{b0:02x}-{c1:02x}{c0:02x}-");
    for (i, byte) in rest.iter().enumerate() {
        if i == 2 {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

/// The `PARTUUID` of partition number `partn` (1-based, as in `sda3`) of the disk
/// read through `disk_head`: the GPT unique partition GUID when the disk has a
/// (protective MBR + valid) GPT, else `xxxxxxxx-NN` from the MBR disk signature.
/// `Ok(None)` when there is no such partition, no recognisable table, or the MBR
/// disk signature is zero. I/O errors other than a short read are returned.
pub fn partuuid(disk_head: &mut (impl Read + Seek), partn: u32) -> io::Result<Option<String>> {
    if partn == 0 {
        return Ok(None);
    }
    let Some(mbr) = read_at(disk_head, 0, 512)? else {
        return Ok(None);
    };
    let Some(mbr) = Mbr::parse(&mbr) else {
        return Ok(None);
    };
    if mbr.is_protective() {
        if let Some(gpt) = find_gpt(disk_head)? {
            return gpt_entry_guid(disk_head, &gpt, partn);
        }
        // A protective MBR without a readable GPT: the kernel ignores the disk.
        return Ok(None);
    }
    mbr_partuuid(disk_head, &mbr, partn)
}

// ---------------------------------------------------------------- I/O helpers

/// Reads exactly `len` bytes at `off`; `Ok(None)` when the device is too short.
fn read_at<R: Read + Seek>(r: &mut R, off: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    r.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len];
    match r.read_exact(&mut buf) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn get_arr<const N: usize>(buf: &[u8], off: usize) -> Option<[u8; N]> {
    buf.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn le32(buf: &[u8], off: usize) -> Option<u32> {
    get_arr(buf, off).map(u32::from_le_bytes)
}

fn le64(buf: &[u8], off: usize) -> Option<u64> {
    get_arr(buf, off).map(u64::from_le_bytes)
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

// ---------------------------------------------------------------- MBR

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    boot: u8,
    ptype: u8,
    start: u32,
    sectors: u32,
}

impl MbrEntry {
    fn parse(b: &[u8]) -> Option<MbrEntry> {
        Some(MbrEntry {
            boot: *b.first()?,
            ptype: *b.get(4)?,
            start: le32(b, 8)?,
            sectors: le32(b, 12)?,
        })
    }

    fn is_extended(&self) -> bool {
        matches!(self.ptype, 0x05 | 0x0F | 0x85)
    }

    /// The kernel counts any entry with a non-zero size, whatever its type.
    fn is_used(&self) -> bool {
        self.sectors != 0
    }
}

struct Mbr {
    signature: u32,
    entries: [MbrEntry; 4],
}

impl Mbr {
    /// A sector with 0x55AA whose four boot indicators are 0 or 0x80 (the
    /// kernel's test that tells a partition table from, e.g., a FAT boot sector).
    fn parse(sector: &[u8]) -> Option<Mbr> {
        if sector.get(510..512)? != [0x55, 0xAA] {
            return None;
        }
        let e = |i: usize| MbrEntry::parse(sector.get(446 + 16 * i..446 + 16 * (i + 1))?);
        let entries = [e(0)?, e(1)?, e(2)?, e(3)?];
        if entries.iter().any(|p| p.boot != 0 && p.boot != 0x80) {
            return None;
        }
        Some(Mbr {
            signature: le32(sector, 440)?,
            entries,
        })
    }

    fn is_protective(&self) -> bool {
        self.entries.iter().any(|p| p.ptype == 0xEE)
    }
}

fn mbr_uuid(sig: u32, partn: u32) -> String {
    format!("{sig:08x}-{partn:02x}")
}

fn mbr_partuuid<R: Read + Seek>(r: &mut R, mbr: &Mbr, partn: u32) -> io::Result<Option<String>> {
    if mbr.signature == 0 {
        return Ok(None);
    }
    if (1..=4).contains(&partn) {
        let used = usize::try_from(partn - 1)
            .ok()
            .and_then(|i| mbr.entries.get(i))
            .is_some_and(|p| p.is_used());
        return Ok(used.then(|| mbr_uuid(mbr.signature, partn)));
    }
    // Logical partitions: numbered from 5 along the extended partition's chain of
    // EBRs (512-byte sectors, as the kernel's msdos parser assumes).
    let Some(ext) = mbr.entries.iter().find(|p| p.is_extended() && p.is_used()) else {
        return Ok(None);
    };
    let ext_start = u64::from(ext.start);
    let mut ebr_lba = ext_start;
    let mut next_num = 5u32;
    for _ in 0..MAX_LOGICAL {
        let Some(sector) = read_at(r, ebr_lba.saturating_mul(512), 512)? else {
            return Ok(None);
        };
        let Some(ebr) = Mbr::parse(&sector) else {
            return Ok(None);
        };
        for _ in ebr
            .entries
            .iter()
            .filter(|p| p.is_used() && !p.is_extended())
        {
            if next_num == partn {
                return Ok(Some(mbr_uuid(mbr.signature, partn)));
            }
            next_num = next_num.saturating_add(1);
        }
        let Some(link) = ebr.entries.iter().find(|p| p.is_extended() && p.is_used()) else {
            return Ok(None);
        };
        // Links are relative to the start of the extended partition.
        // A looping chain is cut by the MAX_LOGICAL bound.
        ebr_lba = ext_start.saturating_add(u64::from(link.start));
    }
    Ok(None)
}

// ---------------------------------------------------------------- GPT

struct Gpt {
    sector: u64,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
}

/// Finds a valid GPT header (CRCs checked) for sector sizes 512 and 4096: the
/// primary at LBA 1 first, then the backup at the last LBA.
fn find_gpt<R: Read + Seek>(r: &mut R) -> io::Result<Option<Gpt>> {
    for sector in [512u64, 4096] {
        if let Some(g) = gpt_header_at(r, sector, 1)? {
            return Ok(Some(g));
        }
    }
    let size = r.seek(SeekFrom::End(0))?;
    for sector in [512u64, 4096] {
        let lbas = size / sector;
        if lbas >= 2 {
            if let Some(g) = gpt_header_at(r, sector, lbas - 1)? {
                return Ok(Some(g));
            }
        }
    }
    Ok(None)
}

fn gpt_header_at<R: Read + Seek>(r: &mut R, sector: u64, lba: u64) -> io::Result<Option<Gpt>> {
    let Some(off) = lba.checked_mul(sector) else {
        return Ok(None);
    };
    let Some(mut hdr) = read_at(r, off, sector as usize)? else {
        return Ok(None);
    };
    let Some(gpt) = parse_gpt_header(&mut hdr, lba) else {
        return Ok(None);
    };
    let gpt = Gpt { sector, ..gpt };
    // The entry array must match the header's CRC.
    let Some(want_crc) = le32(&hdr, 88) else {
        return Ok(None);
    };
    let len = u64::from(gpt.num_entries) * u64::from(gpt.entry_size);
    let Some(arr_off) = gpt.entries_lba.checked_mul(sector) else {
        return Ok(None);
    };
    let Ok(len) = usize::try_from(len) else {
        return Ok(None);
    };
    let Some(array) = read_at(r, arr_off, len)? else {
        return Ok(None);
    };
    if crc32(&array) != want_crc {
        return Ok(None);
    }
    Ok(Some(gpt))
}

/// Checks signature, header size, header CRC, own LBA and entry geometry.
/// (Zeroes the CRC field of `hdr` while checking.)
fn parse_gpt_header(hdr: &mut [u8], lba: u64) -> Option<Gpt> {
    if hdr.get(0..8)? != b"EFI PART" {
        return None;
    }
    let hsize = usize::try_from(le32(hdr, 12)?).ok()?;
    if hsize < 92 || hsize > hdr.len() {
        return None;
    }
    let crc = le32(hdr, 16)?;
    hdr.get_mut(16..20)?.fill(0);
    if crc32(hdr.get(..hsize)?) != crc {
        return None;
    }
    if le64(hdr, 24)? != lba {
        return None;
    }
    let entries_lba = le64(hdr, 72)?;
    let num_entries = le32(hdr, 80)?;
    let entry_size = le32(hdr, 84)?;
    if num_entries == 0
        || num_entries > MAX_GPT_ENTRIES
        || !(128..=MAX_GPT_ENTRY_SIZE).contains(&entry_size)
        || entry_size % 8 != 0
    {
        return None;
    }
    Some(Gpt {
        sector: 0,
        entries_lba,
        num_entries,
        entry_size,
    })
}

/// Raw 16-byte type and unique GUIDs of entry `partn`; `None` for an unused slot.
fn gpt_entry_raw<R: Read + Seek>(r: &mut R, gpt: &Gpt, partn: u32) -> io::Result<Option<([u8; 16], [u8; 16])>> {
    if partn > gpt.num_entries {
        return Ok(None);
    }
    let off = gpt
        .entries_lba
        .checked_mul(gpt.sector)
        .and_then(|o| o.checked_add(u64::from(partn - 1) * u64::from(gpt.entry_size)));
    let Some(off) = off else {
        return Ok(None);
    };
    let Some(entry) = read_at(r, off, 32)? else {
        return Ok(None);
    };
    let (Some(type_guid), Some(unique)) = (get_arr::<16>(&entry, 0), get_arr::<16>(&entry, 16)) else {
        return Ok(None);
    };
    if type_guid == [0u8; 16] {
        return Ok(None); // unused slot
    }
    Ok(Some((type_guid, unique)))
}

fn gpt_entry_guid<R: Read + Seek>(r: &mut R, gpt: &Gpt, partn: u32) -> io::Result<Option<String>> {
    Ok(gpt_entry_raw(r, gpt, partn)?.map(|(_, unique)| parse_gpt_guid(&unique)))
}

/// The GPT partition *type* GUID of partition `partn` (1-based), formatted like
/// [`parse_gpt_guid`] (e.g. the ESP's `c12a7328-f81f-11d2-ba4b-00a0c93ec93b`).
/// `Ok(None)` without a protective MBR and a valid GPT (primary, else backup;
/// 512- or 4096-byte sectors), or for an unused slot.
pub fn gpt_partition_type(disk: &mut (impl Read + Seek), partn: u32) -> io::Result<Option<String>> {
    if partn == 0 {
        return Ok(None);
    }
    let Some(mbr) = read_at(disk, 0, 512)? else {
        return Ok(None);
    };
    if !Mbr::parse(&mbr).is_some_and(|m| m.is_protective()) {
        return Ok(None);
    }
    let Some(gpt) = find_gpt(disk)? else {
        return Ok(None);
    };
    Ok(gpt_entry_raw(disk, &gpt, partn)?.map(|(t, _)| parse_gpt_guid(&t)))
}
