//! Kernel symbols from `/proc/kallsyms`.

mod kallsyms;

pub use kallsyms::{Kallsyms, KernelSymbol};
