//! Loading DWARF sections as plain slices: windows into the mapped file (no copy), or owned
//! decompressed buffers (zlib or zstd, `SHF_COMPRESSED` or `.zdebug_*`).
//!
//! The slices are `'static` to gimli, which is only sound because [`Buffers`] keeps what they
//! point into alive and unmoved for as long as the reader exists (see `DwarfContext`).
//! Slices (not `Arc`-counted readers) make every gimli read a pointer bump, no refcounting.

use std::sync::Arc;

use object::{CompressionFormat, Object, ObjectSection};

use crate::binary::Bytes;
use crate::{Binary, Error};

pub(crate) type Reader = gimli::EndianSlice<'static, gimli::RunTimeEndian>;

/// The storage behind a [`Reader`]'s slices.
pub(crate) struct Buffers {
    _file: Arc<Bytes>,
    _decompressed: Vec<Box<[u8]>>,
}

/// Decompressed sections larger than this ratio to their compressed size are rejected: real
/// DWARF compresses 3-10x; zlib's maximum is about 1032x.
const MAX_RATIO: u64 = 1100;

/// Erases a slice's lifetime.
///
/// # Safety
/// The caller must keep the memory behind `s` alive and unmoved for as long as the returned
/// slice is used: here, a mapping or heap buffer owned by an `Arc<Bytes>` or a `Box<[u8]>` that
/// [`Buffers`] holds next to the reader, declared after it so that it is dropped after it.
unsafe fn extend(s: &[u8]) -> &'static [u8] {
    // SAFETY: same pointer and length; validity for the extended lifetime is the caller's promise.
    unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) }
}

pub(crate) fn load_dwarf(binary: &Binary) -> Result<(gimli::Dwarf<Reader>, Buffers), Error> {
    let bytes: &[u8] = binary.bytes();
    let obj = object::File::parse(bytes)?;
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let mut decompressed: Vec<Box<[u8]>> = Vec::new();
    let mut load = |id: gimli::SectionId| -> Result<Reader, Error> {
        let data: &'static [u8] = match obj.section_by_name(id.name()) {
            Some(section) if section.kind() != object::SectionKind::UninitializedData => {
                match section_bytes(&section)? {
                    Section::File(s) => {
                        // SAFETY: `s` points into the file's bytes, owned by the `Arc<Bytes>`
                        // that `Buffers` keeps alive beside the reader; mappings and heap
                        // buffers never move.
                        unsafe { extend(s) }
                    }
                    Section::Owned(b) => {
                        // SAFETY: a boxed slice's heap memory does not move when the box is moved
                        // into `decompressed`, which `Buffers` keeps alive beside the reader.
                        let s = unsafe { extend(&b) };
                        decompressed.push(b);
                        s
                    }
                }
            }
            _ => &[],
        };
        Ok(gimli::EndianSlice::new(data, endian))
    };
    let dwarf = gimli::Dwarf::load(&mut load)?;
    Ok((
        dwarf,
        Buffers {
            _file: binary.data.clone(),
            _decompressed: decompressed,
        },
    ))
}

enum Section<'a> {
    File(&'a [u8]),
    Owned(Box<[u8]>),
}

fn section_bytes<'a>(section: &object::Section<'a, '_>) -> Result<Section<'a>, Error> {
    let compressed = section.compressed_data()?;
    if compressed.format == CompressionFormat::None {
        return Ok(Section::File(compressed.data));
    }
    let limit = (compressed.data.len() as u64)
        .saturating_mul(MAX_RATIO)
        .saturating_add(1 << 20);
    if compressed.uncompressed_size > limit {
        return Err(Error::Malformed {
            what: "compressed section size",
        });
    }
    Ok(Section::Owned(
        compressed.decompress()?.into_owned().into_boxed_slice(),
    ))
}

impl From<gimli::Error> for Error {
    fn from(e: gimli::Error) -> Self {
        Error::Dwarf(e.to_string())
    }
}
