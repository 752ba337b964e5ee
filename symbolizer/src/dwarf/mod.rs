//! DWARF line tables and inline frames via `gimli`/`addr2line`, with compressed sections and
//! separate debug files.

mod debug_file;
mod sections;

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use crate::demangle::demangle;
use crate::{Binary, Error, Frame, Miss, SymbolizerConfig};

pub use debug_file::{find_debug_file, find_debug_file_with};
use sections::{Reader, Sections};

/// The parsed DWARF of one file, borrowing from the sections that it owns.
type Context<'a> = addr2line::Context<Reader<'a>>;

self_cell::self_cell! {
    /// The sections and the `addr2line` context that borrows from them, kept together.
    struct Parsed {
        owner: Sections,
        // addr2line's lazily filled caches make the context invariant in its lifetime.
        #[not_covariant]
        dependent: Context,
    }
}

/// One binary's DWARF, parsed once. Holds the file (or its separate debug file) alive.
pub struct DwarfContext {
    parsed: Parsed,
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
    /// Loads DWARF from `binary`, else from its separate debug file (found as
    /// [`find_debug_file`] does). `Ok(None)`: neither has DWARF. An error: the DWARF that was
    /// found cannot be used.
    pub fn load(binary: &Binary, config: &SymbolizerConfig) -> Result<Option<DwarfContext>, Error> {
        if has_debug_info(binary) {
            return Self::from_binary(binary).map(Some);
        }
        if !config.search_debug_files {
            return Ok(None);
        }
        match find_debug_file(binary, &config.debug_dirs) {
            Some(debug) if has_debug_info(&debug) => Self::from_binary(&debug).map(Some),
            _ => Ok(None),
        }
    }

    /// Parses the DWARF sections of `source`.
    /// The context shares the file's bytes, so `source` need not outlive it.
    pub fn from_binary(source: &Binary) -> Result<DwarfContext, Error> {
        let parsed = Parsed::try_new(Sections::load(source)?, |sections| {
            addr2line::Context::from_dwarf(sections.dwarf())
        })?;
        Ok(DwarfContext {
            parsed,
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
        self.parsed
            .with_dependent(|_, ctx| frames_in(ctx, addr, inlines))
    }

    /// The line-table row for `addr`, without function information.
    pub fn location(&self, addr: u64) -> Option<(Option<String>, Option<u32>)> {
        if addr == u64::MAX {
            return None;
        }
        self.parsed.with_dependent(|_, ctx| {
            let loc = ctx.find_location(addr).ok()??;
            Some((loc.file.map(str::to_owned), loc.line.filter(|&l| l != 0)))
        })
    }
}

/// The frames of `addr` in `ctx`: see [`DwarfContext::frames`].
fn frames_in(ctx: &Context<'_>, addr: u64, inlines: bool) -> Result<Vec<Frame>, Miss> {
    let mut iter = ctx
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

fn has_debug_info(binary: &Binary) -> bool {
    let Ok(obj) = object::File::parse(binary.bytes()) else {
        return false;
    };
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0 && s.kind() != object::SectionKind::UninitializedData)
}
