//! Which bytes of a zip archive a conversion reads, so that a node staging a big archive from
//! object storage downloads only those: the central directory, and the member the conversion
//! opens (with the members of the same stem, such as a `.tfw` world file). The rest of the
//! staged file is a hole, never read. Anything this does not understand (ZIP64, a directory
//! that lies) answers `None`, and the archive is staged whole: slower, never wrong.

use std::ops::Range;

/// The end-of-central-directory record: signature, then 18 bytes, then a comment of up to
/// 64 KiB. The tail to read to be sure to find it.
pub const TAIL: u64 = 22 + 0xFFFF;

const END: u32 = 0x0605_4b50;
const ENTRY: u32 = 0x0201_4b50;
/// Local header: 30 bytes, then the name and an extra field of up to 64 KiB each.
const LOCAL_HEADER_MAX: u64 = 30 + 2 * 0xFFFF;
/// A data descriptor may follow the data: up to 24 bytes (ZIP64) with its signature.
const DESCRIPTOR_MAX: u64 = 24;

#[derive(Debug, PartialEq)]
pub struct Member {
    pub name: String,
    local_header: u64,
    compressed: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as u64)
}

fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as u64)
}

/// Where the central directory of a `size`-byte archive is, from its last `tail.len()` bytes.
pub fn central_directory(tail: &[u8], size: u64) -> Option<Range<u64>> {
    let tail_start = size.checked_sub(tail.len() as u64)?;
    let at = (0..=tail.len().checked_sub(22)?)
        .rev()
        .find(|&i| u32_at(tail, i) == Some(END as u64))?;
    let (entries, length, offset) = (
        u16_at(tail, at + 10)?,
        u32_at(tail, at + 12)?,
        u32_at(tail, at + 16)?,
    );
    // ZIP64 marks its real values elsewhere; such archives are staged whole.
    if entries == 0xFFFF || length == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
        return None;
    }
    let end = offset.checked_add(length)?;
    (end <= tail_start + at as u64).then_some(offset..end)
}

/// The members a central directory lists; `None` when it is malformed.
pub fn members(directory: &[u8], directory_start: u64) -> Option<Vec<Member>> {
    let mut found = Vec::new();
    let mut at = 0usize;
    while at < directory.len() {
        if u32_at(directory, at)? != ENTRY as u64 {
            return None;
        }
        let compressed = u32_at(directory, at + 20)?;
        let (name_len, extra_len, comment_len) = (
            u16_at(directory, at + 28)? as usize,
            u16_at(directory, at + 30)? as usize,
            u16_at(directory, at + 32)? as usize,
        );
        let local_header = u32_at(directory, at + 42)?;
        let name = directory.get(at + 46..at + 46 + name_len)?;
        if compressed == 0xFFFF_FFFF || local_header == 0xFFFF_FFFF {
            return None;
        }
        if local_header.checked_add(compressed)? > directory_start {
            return None;
        }
        found.push(Member {
            name: String::from_utf8_lossy(name).into_owned(),
            local_header,
            compressed,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    Some(found)
}

/// The byte ranges a conversion of `wanted` (the member its options name), or else of the
/// archive's only raster, reads: that member and every member of the same stem. `None` when
/// the worker would refuse the archive anyway (it then says why) or it is not understood.
pub fn needed(
    members: &[Member],
    wanted: Option<&str>,
    is_raster: impl Fn(&str) -> bool,
    directory_start: u64,
) -> Option<Vec<Range<u64>>> {
    let files: Vec<&Member> = members.iter().filter(|m| !m.name.ends_with('/')).collect();
    let chosen = match wanted.and_then(|w| files.iter().find(|m| m.name == w)) {
        Some(member) => member,
        None => match files
            .iter()
            .filter(|m| is_raster(&m.name))
            .collect::<Vec<_>>()[..]
        {
            [one] => one,
            _ => return None,
        },
    };
    let stem = |name: &str| name.split('.').next().unwrap_or("").to_string();
    let chosen_stem = stem(&chosen.name);
    let ranges = files
        .iter()
        .filter(|m| stem(&m.name) == chosen_stem)
        .map(|m| {
            let end = (m.local_header + LOCAL_HEADER_MAX + m.compressed + DESCRIPTOR_MAX)
                .min(directory_start);
            m.local_header..end
        })
        .collect();
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored (uncompressed) archive of `files`, written the way `zip -0` does.
    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for (name, data) in files {
            let offset = out.len() as u32;
            let mut local = vec![0u8; 30];
            local[0..4].copy_from_slice(&0x0403_4b50u32.to_le_bytes());
            local[18..22].copy_from_slice(&(data.len() as u32).to_le_bytes());
            local[22..26].copy_from_slice(&(data.len() as u32).to_le_bytes());
            local[26..28].copy_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&local);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            let mut entry = vec![0u8; 46];
            entry[0..4].copy_from_slice(&ENTRY.to_le_bytes());
            entry[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
            entry[24..28].copy_from_slice(&(data.len() as u32).to_le_bytes());
            entry[28..30].copy_from_slice(&(name.len() as u16).to_le_bytes());
            entry[42..46].copy_from_slice(&offset.to_le_bytes());
            directory.extend_from_slice(&entry);
            directory.extend_from_slice(name.as_bytes());
        }
        let start = out.len() as u32;
        out.extend_from_slice(&directory);
        let mut end = vec![0u8; 22];
        end[0..4].copy_from_slice(&END.to_le_bytes());
        end[10..12].copy_from_slice(&(files.len() as u16).to_le_bytes());
        end[12..16].copy_from_slice(&(directory.len() as u32).to_le_bytes());
        end[16..20].copy_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end);
        out
    }

    fn raster(name: &str) -> bool {
        name.ends_with(".tif") || name.ends_with(".hgt")
    }

    fn plan(zip: &[u8], wanted: Option<&str>) -> Option<Vec<Range<u64>>> {
        let size = zip.len() as u64;
        let tail = &zip[zip.len().saturating_sub(TAIL as usize)..];
        let directory = central_directory(tail, size)?;
        let listed = members(
            &zip[directory.start as usize..directory.end as usize],
            directory.start,
        )?;
        needed(&listed, wanted, raster, directory.start)
    }

    #[test]
    fn only_the_raster_and_its_side_files_are_needed() {
        let junk = vec![9u8; 300_000];
        let zip = archive(&[
            ("junk.bin", &junk),
            ("a.tif", b"TIFF"),
            ("a.tfw", b"1 0 0"),
            ("b.txt", b"x"),
        ]);
        let ranges = plan(&zip, None).expect("understood");
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        let needed: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(needed < 1000, "{needed}");
        assert!(ranges.iter().all(|r| r.start >= 300_000));
    }

    #[test]
    fn the_member_the_options_name_wins_and_an_ambiguous_archive_is_staged_whole() {
        let zip = archive(&[("a.tif", b"A"), ("b.tif", b"B")]);
        assert_eq!(plan(&zip, None), None);
        let ranges = plan(&zip, Some("b.tif")).unwrap();
        assert_eq!(ranges.len(), 1);
        assert!(ranges[0].start > 0);
    }

    #[test]
    fn the_sample_srtm_archive_is_understood() {
        let zip = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/N10W110.hgt.zip"
        ))
        .unwrap();
        let ranges = plan(&zip, None).expect("understood");
        assert_eq!(ranges.len(), 1);
    }

    #[test]
    fn lies_and_truncations_are_not_understood() {
        let zip = archive(&[("a.tif", b"TIFF")]);
        // Cut off: no end record.
        assert_eq!(plan(&zip[..zip.len() - 5], None), None);
        // A directory said to start past the data.
        let mut lying = zip.clone();
        let n = lying.len();
        lying[n - 6..n - 2].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(plan(&lying, None), None);
        // A member said to lie past the directory.
        let mut lying = zip.clone();
        let start = central_directory(&zip, zip.len() as u64).unwrap().start as usize;
        lying[start + 42..start + 46].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert_eq!(plan(&lying, None), None);
        assert_eq!(plan(b"not a zip at all", None), None);
    }
}
