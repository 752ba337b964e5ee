//! Turns ELF virtual addresses into frames, innermost first, and kernel addresses into
//! `/proc/kallsyms` symbols.
//!
//! Sources, most precise first, per binary:
//! - [`gopclntab`]: Go's own tables (names, files, lines, full inline chains), Go 1.2 to 1.27,
//!   also in stripped (`-s -w`), PIE and section-less files;
//! - [`dwarf`]: `gimli`/`addr2line` with inline frames, DWARF 4/5, zlib/zstd compressed
//!   sections, separate debug files (build-id dirs and CRC-checked `.gnu_debuglink`);
//! - [`elf`]: `.symtab`/`.dynsym`, nearest containing function symbol.
//!
//! Names are demangled ([`demangle`]). A miss is a typed [`Miss`], not an error. Parsed state is
//! cached per [`BinaryId`] (LRU) with a per-address result cache; a [`Symbolizer`] is `Send`
//! but single-threaded, and [`SymbolizerThread`] runs one off the caller's thread.
//!
//! ```no_run
//! use symbolizer::{Binary, Symbolizer, SymbolizerConfig};
//! let bin = Binary::open("/usr/bin/true".as_ref()).unwrap();
//! let mut s = Symbolizer::new(SymbolizerConfig::default());
//! for lookup in s.symbolize(&bin, &[0x1234]).unwrap() {
//!     println!("{lookup:?}");
//! }
//! ```

#![warn(missing_docs)]

mod binary;
mod cache;
pub mod demangle;
pub mod dwarf;
pub mod elf;
#[doc(hidden)]
pub mod fuzzing;
pub mod gopclntab;
pub mod kernel;
mod service;
mod symbolizer;

pub use binary::{Binary, BinaryId, LoadSegment};
pub use kernel::{Kallsyms, KernelSymbol};
pub use service::SymbolizerThread;
pub use symbolizer::{Symbolizer, SymbolizerConfig};

use std::path::PathBuf;

/// One frame; a lookup yields them innermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Demangled function name.
    pub function: String,
    /// Source file path, as the DWARF line table or the pclntab records it.
    pub file: Option<String>,
    /// Source line; `None` when unknown (a 0 in the tables counts as unknown).
    pub line: Option<u32>,
    /// True for every frame except the outermost (physical) one.
    pub inlined: bool,
}

/// Why an address has no frames. A reason, not an error: the binary itself was fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Miss {
    /// The binary has symbols, but none covers the address.
    UnknownAddress,
    /// The binary has no symbol source at all (stripped, no DWARF, no pclntab).
    NoSymbols,
    /// The symbol source uses a format this crate does not read.
    Unsupported,
    /// The symbol source is corrupt at this address.
    Malformed,
}

impl Miss {
    /// A stable `snake_case` name, e.g. for metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::UnknownAddress => "unknown_address",
            Miss::NoSymbols => "no_symbols",
            Miss::Unsupported => "unsupported",
            Miss::Malformed => "malformed",
        }
    }
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frames innermost first, or why there are none.
pub type Lookup = Result<Vec<Frame>, Miss>;

/// Why a binary (or kallsyms file) could not be used at all. Per-address failures are [`Miss`]es.
///
/// Messages say what failed, not why: the cause is the [`source`](std::error::Error::source),
/// so print the chain (e.g. `anyhow`'s `{:#}`) to see both.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// Opening, mapping or reading a file failed.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The object file's headers or section table cannot be parsed.
    #[error("cannot parse object file")]
    Object(#[from] object::Error),
    /// A valid object file, but not ELF.
    #[error("not an ELF file")]
    NotElf,
    /// The DWARF sections cannot be parsed.
    #[error("cannot parse DWARF")]
    Dwarf(#[from] gimli::Error),
    /// A structure this crate checks itself is inconsistent.
    #[error("malformed {what}")]
    Malformed {
        /// Which structure.
        what: &'static str,
    },
}
