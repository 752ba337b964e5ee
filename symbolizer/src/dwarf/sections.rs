//! Loading DWARF sections as plain slices: windows into the mapped file (no copy), or owned
//! decompressed buffers (zlib or zstd, `SHF_COMPRESSED` or `.zdebug_*`).
//!
//! [`Sections`] owns the storage; the `addr2line` context borrows from it with a real lifetime
//! ([`Reader<'a>`]), and `DwarfContext` keeps the two together in a [`self_cell`]. Borrowed
//! slices (not `Arc`-counted readers) keep every gimli read a pointer bump, no refcounting.

use std::ops::Range;
use std::sync::Arc;

use object::{CompressionFormat, Object, ObjectSection};

use crate::binary::Bytes;
use crate::{Binary, Error};

/// The reader the DWARF parser runs on: a borrowed slice of a [`Sections`].
pub(crate) type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// Decompressed sections larger than this ratio to their compressed size are rejected: real
/// DWARF compresses 3-10x; zlib's maximum is about 1032x.
const MAX_RATIO: u64 = 1100;

/// Where one section's bytes are.
#[derive(Debug, Default)]
enum SectionData {
    /// Absent or empty.
    #[default]
    Empty,
    /// A byte range of the file.
    File(Range<usize>),
    /// Decompressed.
    Owned(Box<[u8]>),
}

/// The DWARF sections of one file, owning what their readers point into.
#[derive(Debug)]
pub(crate) struct Sections {
    file: Arc<Bytes>,
    endian: gimli::RunTimeEndian,
    sections: gimli::DwarfSections<SectionData>,
}

impl Sections {
    /// Finds (and decompresses) the DWARF sections of `binary`. Missing sections are empty.
    pub(crate) fn load(binary: &Binary) -> Result<Sections, Error> {
        let bytes: &[u8] = binary.bytes();
        let obj = object::File::parse(bytes)?;
        let endian = if obj.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let sections = gimli::DwarfSections::load(|id| -> Result<SectionData, Error> {
            match obj.section_by_name(id.name()) {
                Some(section) if section.kind() != object::SectionKind::UninitializedData => {
                    section_data(bytes, &section)
                }
                _ => Ok(SectionData::Empty),
            }
        })?;
        Ok(Sections {
            file: binary.data.clone(),
            endian,
            sections,
        })
    }

    /// Readers over every section, borrowing from `self`.
    pub(crate) fn dwarf(&self) -> gimli::Dwarf<Reader<'_>> {
        self.sections
            .borrow(|s| gimli::EndianSlice::new(self.bytes(s), self.endian))
    }

    fn bytes<'a>(&'a self, s: &'a SectionData) -> &'a [u8] {
        match s {
            SectionData::Empty => &[],
            // The range was taken from a slice of this same file, so it is in bounds.
            SectionData::File(r) => self.file.get(r.clone()).unwrap_or(&[]),
            SectionData::Owned(b) => b,
        }
    }
}

/// The section's bytes as a range of `file`, or decompressed into a buffer.
fn section_data(file: &[u8], section: &object::Section<'_, '_>) -> Result<SectionData, Error> {
    let compressed = section.compressed_data()?;
    if compressed.format == CompressionFormat::None {
        let data = compressed.data;
        if data.is_empty() {
            return Ok(SectionData::Empty);
        }
        // `object` hands out sub-slices of the input, so the offset is the pointer difference.
        let start = (data.as_ptr() as usize).wrapping_sub(file.as_ptr() as usize);
        let range = start..start.wrapping_add(data.len());
        return match file.get(range.clone()) {
            Some(s) if std::ptr::eq(s, data) => Ok(SectionData::File(range)),
            _ => Err(Error::Malformed {
                what: "section outside the file",
            }),
        };
    }
    let limit = (compressed.data.len() as u64)
        .saturating_mul(MAX_RATIO)
        .saturating_add(1 << 20);
    if compressed.uncompressed_size > limit {
        return Err(Error::Malformed {
            what: "compressed section size",
        });
    }
    Ok(SectionData::Owned(
        compressed.decompress()?.into_owned().into_boxed_slice(),
    ))
}
