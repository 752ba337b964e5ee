//! An opened ELF file: its bytes, identity, build IDs and PT_LOAD segments.

use std::fs::File;
use std::io::Read as _;
use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};

use crate::Error;

/// Identity of a binary, used as the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryId {
    /// GNU build ID (`NT_GNU_BUILD_ID`).
    BuildId(Vec<u8>),
    /// File identity when there is no build ID.
    File {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
        /// `st_size`.
        size: u64,
        /// `st_mtime` in nanoseconds since the epoch.
        mtime_ns: i128,
    },
    /// In-memory bytes with no file behind them: a hash of the contents.
    Bytes {
        /// Length in bytes.
        len: u64,
        /// FNV-1a hash of the bytes.
        hash: u64,
    },
}

/// One `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// File offset of the segment's first byte.
    pub p_offset: u64,
    /// Virtual address of the segment's first byte.
    pub p_vaddr: u64,
    /// Bytes backed by the file.
    pub p_filesz: u64,
    /// Bytes in memory (`>= p_filesz`; the rest is zero-filled).
    pub p_memsz: u64,
    /// `PF_X` is set.
    pub executable: bool,
}

/// The file's bytes. Mapped when possible, so a 1 GiB binary costs page cache, not heap.
#[derive(Debug)]
pub(crate) enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened binary. The bytes are held (mapped or read) for the lifetime of the value, so it
/// stays usable after its path disappears, e.g. `/proc/PID/map_files/...` after the process exits.
#[derive(Debug)]
pub struct Binary {
    pub(crate) path: Option<PathBuf>,
    pub(crate) data: Arc<Bytes>,
    id: BinaryId,
    gnu_build_id: Option<Vec<u8>>,
    go_build_id: Option<String>,
    segments: Vec<LoadSegment>,
    dynamic: bool,
}

impl Binary {
    /// Opens and maps `path`, then parses the ELF header, build IDs and `PT_LOAD`s.
    /// Symbols are not parsed here; that happens lazily in the [`crate::Symbolizer`].
    pub fn open(path: &Path) -> Result<Arc<Binary>, Error> {
        Self::open_as(path, path)
    }

    /// Opens `open` (e.g. `/proc/PID/map_files/START-END`) but records `original` (the path in
    /// `/proc/PID/maps`) as the binary's path, so `.gnu_debuglink` is searched next to it.
    pub fn open_as(open: &Path, original: &Path) -> Result<Arc<Binary>, Error> {
        let file = File::open(open).map_err(|source| Error::Io {
            path: open.to_path_buf(),
            source,
        })?;
        Self::from_file(file, original)
    }

    /// Maps an already open file (one opened safely inside a process's root, say), recording
    /// `original` as its path.
    pub fn from_file(file: File, original: &Path) -> Result<Arc<Binary>, Error> {
        let path = original;
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(io)?;
        // SAFETY: the mapping is private and read-only. If another process truncates the file
        // while it is mapped, reads past the new end fault (SIGBUS); that is the accepted cost of
        // mapping, shared by every mmap-based symbolizer. Binaries being profiled are not
        // normally rewritten in place (installers replace them by rename).
        let data = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(m) => Bytes::Mapped(m),
            // Empty files and some special files cannot be mapped; read them instead.
            Err(_) => {
                let mut bytes = Vec::new();
                (&file).read_to_end(&mut bytes).map_err(io)?;
                Bytes::Owned(bytes)
            }
        };
        let file_id = BinaryId::File {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
        Self::parse(Some(original.to_path_buf()), data, file_id).map(Arc::new)
    }

    /// Parses an in-memory ELF image (tests, fuzzing, files fetched from elsewhere).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Arc<Binary>, Error> {
        let id = BinaryId::Bytes {
            len: bytes.len() as u64,
            hash: fnv1a(&bytes),
        };
        Self::parse(None, Bytes::Owned(bytes), id).map(Arc::new)
    }

    fn parse(path: Option<PathBuf>, data: Bytes, file_id: BinaryId) -> Result<Binary, Error> {
        let obj = object::File::parse(&*data)?;
        if obj.format() != object::BinaryFormat::Elf {
            return Err(Error::NotElf);
        }
        // A corrupt note section is not fatal: the binary simply has no build ID.
        let gnu_build_id = obj
            .build_id()
            .ok()
            .flatten()
            .filter(|b| !b.is_empty())
            .map(<[u8]>::to_vec);
        let go_build_id = go_build_id(&obj);
        let segments = obj
            .segments()
            .map(|seg| {
                let (p_offset, p_filesz) = seg.file_range();
                let executable = match seg.flags() {
                    SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                    _ => false,
                };
                LoadSegment {
                    p_offset,
                    p_vaddr: seg.address(),
                    p_filesz,
                    p_memsz: seg.size(),
                    executable,
                }
            })
            .collect();
        let dynamic = obj.kind() == object::ObjectKind::Dynamic;
        let id = match &gnu_build_id {
            Some(b) => BinaryId::BuildId(b.clone()),
            None => file_id,
        };
        drop(obj);
        Ok(Binary {
            path,
            data: Arc::new(data),
            id,
            gnu_build_id,
            go_build_id,
            segments,
            dynamic,
        })
    }

    /// The cache key: the GNU build ID, else the file's identity or a hash of the bytes.
    pub fn id(&self) -> &BinaryId {
        &self.id
    }

    /// The path given to [`Binary::open`] (the original one for [`Binary::open_as`]); `None`
    /// for [`Binary::from_bytes`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The `NT_GNU_BUILD_ID` note's bytes, if the file has a non-empty one.
    pub fn gnu_build_id(&self) -> Option<&[u8]> {
        self.gnu_build_id.as_deref()
    }

    /// The Go build ID from the `.note.go.buildid` note, if any.
    pub fn go_build_id(&self) -> Option<&str> {
        self.go_build_id.as_deref()
    }

    /// The `PT_LOAD` program headers, in file order.
    pub fn load_segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    /// Maps a file offset (as in `/proc/PID/maps`) to an ELF virtual address through the
    /// `PT_LOAD` whose file range contains it.
    pub fn file_offset_to_vaddr(&self, file_offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            let rel = file_offset.checked_sub(s.p_offset)?;
            (rel < s.p_filesz).then(|| s.p_vaddr.wrapping_add(rel))
        })
    }

    /// `ET_DYN`: a PIE executable or a shared library, loaded at a bias.
    pub fn is_pie_or_shared(&self) -> bool {
        self.dynamic
    }
}

/// The Go build ID lives in the `.note.go.buildid` note (name "Go", type 4).
fn go_build_id(obj: &object::File<'_>) -> Option<String> {
    let sec = obj.section_by_name(".note.go.buildid")?;
    let data = sec.data().ok()?;
    let (name, desc) = parse_note(data, 4)?;
    (name == b"Go").then(|| String::from_utf8_lossy(desc).into_owned())
}

/// Parses the first note of a note section if it has type `want_type`: (name, desc).
fn parse_note(data: &[u8], want_type: u32) -> Option<(&[u8], &[u8])> {
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            data.get(off..off.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let namesz = u32_at(0)? as usize;
    let descsz = u32_at(4)? as usize;
    if u32_at(8)? != want_type {
        return None;
    }
    let name_end = 12usize.checked_add(namesz)?;
    let name = data.get(12..name_end)?;
    let name_len = name.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    let name = &name[..name_len];
    let desc_start = name_end.checked_add(3)? & !3;
    let desc = data.get(desc_start..desc_start.checked_add(descsz)?)?;
    Some((name, desc))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_parsing_is_bounds_checked() {
        let mut note = Vec::new();
        note.extend_from_slice(&3u32.to_le_bytes());
        note.extend_from_slice(&5u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(b"Go\0\0abcde");
        assert_eq!(parse_note(&note, 4), Some((&b"Go"[..], &b"abcde"[..])));
        for cut in 0..note.len() {
            let _ = parse_note(&note[..cut], 4);
        }
        let mut lying = note.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_note(&lying, 4), None);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Binary::from_bytes(vec![0x7f, b'E', b'L', b'F', 2, 1, 1]).is_err());
        assert!(Binary::from_bytes(Vec::new()).is_err());
    }
}
