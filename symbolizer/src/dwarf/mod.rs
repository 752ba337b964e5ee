//! DWARF line tables and inline frames via `gimli`/`addr2line`, with compressed sections and
//! separate debug files.

mod debug_file;
mod sections;

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use crate::demangle::demangle;
use crate::{Binary, Frame, Miss, SymbolizerConfig};

pub use debug_file::find_debug_file;
pub(crate) use sections::Reader;

/// One binary's DWARF, parsed once. Holds the file (or its separate debug file) alive.
pub struct DwarfContext {
    /// Borrows from `_buffers`: declared first so that it is dropped first.
    ctx: addr2line::Context<Reader>,
    _buffers: sections::Buffers,
    /// The file the DWARF came from (the binary itself or a separate debug file).
    source: Option<PathBuf>,
}

impl std::fmt::Debug for DwarfContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfContext")
            .field("source", &self.source)
            .finish()
    }
}

impl DwarfContext {
    /// Loads DWARF from `binary`, else from its separate debug file. `Ok(None)`: no DWARF.
    pub fn load(binary: &Binary, config: &SymbolizerConfig) -> Option<DwarfContext> {
        if has_debug_info(binary) {
            return Self::from_binary(binary);
        }
        let debug = find_debug_file(binary, &config.debug_dirs)?;
        if has_debug_info(&debug) {
            Self::from_binary(&debug)
        } else {
            None
        }
    }

    /// Parses the DWARF sections of `source`; `None` if they are unusable.
    /// The readers share the file's bytes, so `source` need not outlive the context.
    pub fn from_binary(source: &Binary) -> Option<DwarfContext> {
        let (dwarf, buffers) = sections::load_dwarf(source).ok()?;
        let ctx = addr2line::Context::from_dwarf(dwarf).ok()?;
        Some(DwarfContext {
            ctx,
            _buffers: buffers,
            source: source.path().map(PathBuf::from),
        })
    }

    /// The file the DWARF was read from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Frames innermost first. `Ok(empty)` when no unit covers `addr`, so the caller can fall
    /// back to the symbol table. Function names are demangled; a frame whose DIE has no name
    /// gets an empty name for the caller to fill in.
    pub fn frames(&self, addr: u64, inlines: bool) -> Result<Vec<Frame>, Miss> {
        // addr2line computes `addr + 1` unchecked (a debug-build panic at u64::MAX).
        if addr == u64::MAX {
            return Ok(Vec::new());
        }
        let mut iter = self
            .ctx
            .find_frames(addr)
            .skip_all_loads()
            .map_err(|_| Miss::Malformed)?;
        let mut frames = Vec::new();
        // Bounded: a corrupt DIE tree cannot make this loop forever.
        while let Some(f) = iter.next().map_err(|_| Miss::Malformed)? {
            if frames.len() >= 256 {
                break;
            }
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.raw_name().ok())
                .map(|n: std::borrow::Cow<'_, str>| demangle(&n))
                .unwrap_or_default();
            let (file, line) = match f.location {
                Some(loc) => (loc.file.map(str::to_owned), loc.line.filter(|&l| l != 0)),
                None => (None, None),
            };
            frames.push(Frame {
                function,
                file,
                line,
                inlined: true,
            });
        }
        if let Some(last) = frames.last_mut() {
            last.inlined = false;
        }
        if !inlines && frames.len() > 1 {
            // As llvm-symbolizer --no-inlines: the physical function, at the line-table row.
            let (file, line) = (frames[0].file.take(), frames[0].line);
            frames.drain(..frames.len() - 1);
            frames[0].file = file;
            frames[0].line = line;
        }
        Ok(frames)
    }

    /// The line-table row for `addr`, without function information.
    pub fn location(&self, addr: u64) -> Option<(Option<String>, Option<u32>)> {
        if addr == u64::MAX {
            return None;
        }
        let loc = self.ctx.find_location(addr).ok()??;
        Some((loc.file.map(str::to_owned), loc.line.filter(|&l| l != 0)))
    }
}

fn has_debug_info(binary: &Binary) -> bool {
    let Ok(obj) = object::File::parse(binary.bytes()) else {
        return false;
    };
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0 && s.kind() != object::SectionKind::UninitializedData)
}
