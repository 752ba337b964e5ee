//! ELF symbol tables (`.symtab` and `.dynsym`): the fallback when there is no DWARF or pclntab.

mod symbols;

pub use symbols::{ElfSymbol, ElfSymbols};
