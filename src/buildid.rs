//! The build-id of a hypervisor image on disk (`/boot/xen-*.gz`), so that a
//! run knows exactly which build it expects after the reboot and can compare
//! it with what Xen reports (`xl info`'s build_id) once it booted.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

/// Hypervisor images are a few MiB; anything far larger is not one.
const MAX_IMAGE: u64 = 64 << 20;

/// The hex build-id of the Xen image at `path` (gzip'd or not), if it has one.
pub fn of_file(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut raw = Vec::new();
    file.take(MAX_IMAGE).read_to_end(&mut raw).ok()?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IMAGE)
            .read_to_end(&mut out)
            .ok()?;
        raw = out;
    }
    in_bytes(&raw)
}

/// Finds the ELF note that holds a GNU build-id (namesz 4, type
/// NT_GNU_BUILD_ID, name "GNU\0") anywhere in `image` (the note section
/// is part of the loaded image, which is where Xen reads it from), and
/// returns its descriptor in hex. One such note, or none counts: two
/// different ones would be a guess.
pub fn in_bytes(image: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let mut found: Option<String> = None;
    let mut from = 0;
    while let Some(pos) = find(&image[from..], b"GNU\0").map(|p| p + from) {
        from = pos + 4;
        let Some(header) = pos.checked_sub(12) else {
            continue;
        };
        let (namesz, descsz, kind) = match (
            u32_at(image, header),
            u32_at(image, header + 4),
            u32_at(image, header + 8),
        ) {
            (Some(n), Some(d), Some(k)) => (n, d as usize, k),
            _ => continue,
        };
        if namesz != 4 || kind != NT_GNU_BUILD_ID || !(8..=64).contains(&descsz) {
            continue;
        }
        let Some(desc) = image.get(pos + 4..pos + 4 + descsz) else {
            continue;
        };
        let mut hex = String::with_capacity(2 * desc.len());
        for b in desc {
            let _ = write!(hex, "{b:02x}"); // (writing to a String cannot fail)
        }
        match &found {
            Some(f) if *f != hex => return None,
            _ => found = Some(hex),
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn note(id: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend(4u32.to_le_bytes());
        n.extend((id.len() as u32).to_le_bytes());
        n.extend(3u32.to_le_bytes());
        n.extend(b"GNU\0");
        n.extend(id);
        n
    }

    #[test]
    fn the_build_id_note_is_found_in_a_gzipped_image() {
        let id: Vec<u8> = (1..=20).collect();
        let mut image = vec![0u8; 5000];
        image.extend(b"a stray GNU\0 string that is not a note");
        image.extend(note(&id));
        image.extend(vec![0xffu8; 3000]);
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("xen.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&image).unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        assert_eq!(
            of_file(&path).as_deref(),
            Some("0102030405060708090a0b0c0d0e0f1011121314")
        );
        std::fs::write(&path, &image).unwrap();
        assert!(of_file(&path).is_some(), "uncompressed works too");
    }

    #[test]
    fn no_note_or_two_different_ones_give_none() {
        assert_eq!(in_bytes(b"no notes here at all"), None);
        let mut two = note(&[1; 20]);
        two.extend(note(&[2; 20]));
        assert_eq!(in_bytes(&two), None);
        let mut same = note(&[1; 20]);
        same.extend(note(&[1; 20]));
        assert!(in_bytes(&same).is_some());
        assert_eq!(of_file(Path::new("/nonexistent/xen.gz")), None);
    }
}
