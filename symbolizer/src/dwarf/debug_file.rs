//! Finding a separate debug file: `.build-id/xx/yyyy.debug` in the debug dirs, then
//! `.gnu_debuglink` (CRC-checked) next to the binary, in `.debug/`, and in the debug dirs.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object, ObjectSection};

use crate::Binary;

/// The separate debug file of `binary`: by build ID under each of `debug_dirs`, then by
/// `.gnu_debuglink` name (CRC-checked) next to the binary, in its `.debug/` subdirectory, under
/// each debug dir followed by the binary's directory, and directly in each debug dir. `None` if
/// there is none, or only ones whose build ID or CRC does not match.
pub fn find_debug_file(binary: &Binary, debug_dirs: &[PathBuf]) -> Option<Arc<Binary>> {
    find_debug_file_with(binary, debug_dirs, &open_nonblocking)
}

/// [`find_debug_file`] with every candidate opened by `open`: a profiler looking inside
/// another process's root passes an opener that keeps links from leading out of it. Only
/// regular files are read, whatever `open` returns.
pub fn find_debug_file_with(
    binary: &Binary,
    debug_dirs: &[PathBuf],
    open: &dyn Fn(&Path) -> io::Result<File>,
) -> Option<Arc<Binary>> {
    if let Some(id) = binary.gnu_build_id().filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let rel = format!(".build-id/{}/{}.debug", &hex[..2], &hex[2..]);
        for dir in debug_dirs {
            if let Some(found) =
                open_matching(open, &dir.join(&rel), |b| b.gnu_build_id() == Some(id))
            {
                return Some(found);
            }
        }
    }
    let (name, crc) = debuglink(binary)?;
    // A debuglink name is a bare file name; anything with a path separator is suspect.
    if name.contains('/') || name.is_empty() || name == "." || name == ".." {
        return None;
    }
    let mut candidates = Vec::new();
    if let Some(dir) = binary.path().and_then(Path::parent) {
        candidates.push(dir.join(&name));
        candidates.push(dir.join(".debug").join(&name));
        for d in debug_dirs {
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            candidates.push(d.join(rel).join(&name));
        }
    }
    candidates.extend(debug_dirs.iter().map(|d| d.join(&name)));
    let self_path = binary.path().map(Path::to_path_buf);
    candidates
        .into_iter()
        .filter(|c| Some(c) != self_path.as_ref())
        .find_map(|c| open_matching(open, &c, |b| crc32fast::hash(b.bytes()) == crc))
}

fn open_matching(
    open: &dyn Fn(&Path) -> io::Result<File>,
    path: &Path,
    check: impl Fn(&Binary) -> bool,
) -> Option<Arc<Binary>> {
    let file = open(path).ok()?;
    // Checked on the open file, not the path: a FIFO or device planted there is never read.
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let b = Binary::from_file(file, path).ok()?;
    check(&b).then_some(b)
}

/// Opens without blocking: a FIFO opened for reading would otherwise wait for a writer.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// `.gnu_debuglink`: a NUL-terminated file name, padded to 4 bytes, then a CRC-32 of the file.
fn debuglink(binary: &Binary) -> Option<(String, u32)> {
    let obj = object::File::parse(binary.bytes()).ok()?;
    let data = obj.section_by_name(".gnu_debuglink")?.data().ok()?;
    let nul = data.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(data.get(..nul)?).ok()?.to_owned();
    let crc_off = (nul + 4) & !3;
    let crc = data.get(crc_off..crc_off.checked_add(4)?)?;
    let crc = if obj.is_little_endian() {
        u32::from_le_bytes(crc.try_into().ok()?)
    } else {
        u32::from_be_bytes(crc.try_into().ok()?)
    };
    Some((name, crc))
}
