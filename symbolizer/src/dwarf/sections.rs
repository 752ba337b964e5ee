//! Loading DWARF sections into a `gimli` reader that shares the mapped file (no copy) or owns
//! the decompressed bytes (zlib or zstd, `SHF_COMPRESSED` or `.zdebug_*`).

use std::ops::Deref;
use std::sync::Arc;

use object::{CompressionFormat, Object, ObjectSection};

use crate::binary::Bytes;
use crate::{Binary, Error};

pub(crate) type Reader = gimli::EndianReader<gimli::RunTimeEndian, SectionBytes>;

/// Section bytes: a window into the shared file, or an owned decompressed buffer.
#[derive(Debug, Clone)]
pub(crate) enum SectionBytes {
    File { file: Arc<Bytes>, start: usize, end: usize },
    Owned(Arc<[u8]>),
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            // The range was checked when the value was made; `get` keeps this panic-free anyway.
            SectionBytes::File { file, start, end } => file.get(*start..*end).unwrap_or(&[]),
            SectionBytes::Owned(b) => b,
        }
    }
}

// SAFETY: the bytes behind both variants live in an `Arc` whose contents never move or change
// while any clone exists (a mapping or a boxed slice), so the slice address is stable across
// moves and clones of `SectionBytes`.
unsafe impl stable_deref_trait::StableDeref for SectionBytes {}
// SAFETY: cloning clones the `Arc`, which points at the same bytes.
unsafe impl stable_deref_trait::CloneStableDeref for SectionBytes {}

/// Decompressed sections larger than this ratio to their compressed size are rejected: real
/// DWARF compresses 3-10x; zlib's maximum is about 1032x.
const MAX_RATIO: u64 = 1100;

pub(crate) fn load_dwarf(binary: &Binary) -> Result<gimli::Dwarf<Reader>, Error> {
    let bytes: &[u8] = binary.bytes();
    let obj = object::File::parse(bytes)?;
    let endian = if obj.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
    let base = bytes.as_ptr() as usize;
    let load = |id: gimli::SectionId| -> Result<Reader, Error> {
        let data = match obj.section_by_name(id.name()) {
            Some(section) if section.kind() != object::SectionKind::UninitializedData => {
                section_bytes(binary, base, &section)?
            }
            _ => SectionBytes::Owned(Arc::from(&[][..])),
        };
        Ok(gimli::EndianReader::new(data, endian))
    };
    gimli::Dwarf::load(load)
}

fn section_bytes(binary: &Binary, base: usize, section: &object::Section<'_, '_>) -> Result<SectionBytes, Error> {
    let compressed = section.compressed_data()?;
    if compressed.format == CompressionFormat::None {
        let start = (compressed.data.as_ptr() as usize).wrapping_sub(base);
        let end = start.checked_add(compressed.data.len()).ok_or(Error::Malformed { what: "section range" })?;
        if end > binary.bytes().len() {
            return Err(Error::Malformed { what: "section range" });
        }
        return Ok(SectionBytes::File { file: binary.data.clone(), start, end });
    }
    let limit = (compressed.data.len() as u64).saturating_mul(MAX_RATIO).saturating_add(1 << 20);
    if compressed.uncompressed_size > limit {
        return Err(Error::Malformed { what: "compressed section size" });
    }
    let data = compressed.decompress()?;
    Ok(SectionBytes::Owned(Arc::from(data.into_owned().into_boxed_slice())))
}

impl From<gimli::Error> for Error {
    fn from(e: gimli::Error) -> Self {
        Error::Dwarf(e.to_string())
    }
}
