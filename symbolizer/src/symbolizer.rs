//! The caching front end: one parsed context per binary, plus a per-address result cache.

use std::path::PathBuf;

use crate::cache::{AddrMap, Lru};
use crate::demangle::demangle;
use crate::dwarf::DwarfContext;
use crate::elf::ElfSymbols;
use crate::gopclntab::GoTable;
use crate::{Binary, BinaryId, Error, Frame, Lookup};

/// How a [`Symbolizer`] resolves and caches.
#[derive(Debug, Clone)]
pub struct SymbolizerConfig {
    /// Report inline frames (DWARF and Go). Off: only the physical frame.
    pub inlines: bool,
    /// Where separate debug files are searched (`.build-id/xx/yyyy.debug` and debuglink names).
    pub debug_dirs: Vec<PathBuf>,
    /// Search for separate debug files at all. Off for callers that found them already
    /// (a profiler does, while the process and its mount namespace are still there, with
    /// [`crate::dwarf::find_debug_file_with`]).
    pub search_debug_files: bool,
    /// How many parsed binaries to keep.
    pub cache_binaries: usize,
    /// How many resolved addresses to keep per binary; 0 disables the address cache.
    pub cache_addresses: usize,
}

impl Default for SymbolizerConfig {
    fn default() -> Self {
        SymbolizerConfig {
            inlines: true,
            debug_dirs: vec![PathBuf::from("/usr/lib/debug")],
            search_debug_files: true,
            cache_binaries: 32,
            cache_addresses: 1 << 16,
        }
    }
}

/// Everything parsed from one binary.
struct Context {
    parsed: Parsed,
    addresses: AddrMap<Lookup>,
}

/// The symbol sources of one binary, most precise first.
struct Parsed {
    go: Option<GoTable>,
    elf: ElfSymbols,
    dwarf: Option<DwarfContext>,
}

impl Context {
    fn build(binary: &Binary, config: &SymbolizerConfig) -> Result<Context, Error> {
        let obj = object::File::parse(binary.bytes())?;
        let mut elf = ElfSymbols::from_object(&obj);
        // Unusable DWARF is not fatal: the symbol table still names the functions.
        let dwarf = DwarfContext::load(binary, config).unwrap_or(None);
        // A stripped binary with a separate debug file: take the fuller symbol table.
        if let Some(debug) = dwarf
            .as_ref()
            .and_then(|d| d.source())
            .filter(|p| Some(*p) != binary.path())
        {
            if let Ok(debug_bin) = Binary::open(debug) {
                if let Ok(debug_obj) = object::File::parse(debug_bin.bytes()) {
                    let debug_elf = ElfSymbols::from_object(&debug_obj);
                    if debug_elf.len() > elf.len() {
                        elf = debug_elf;
                    }
                }
            }
        }
        let go = GoTable::load(binary);
        Ok(Context {
            parsed: Parsed { go, elf, dwarf },
            addresses: AddrMap::default(),
        })
    }
}

impl Parsed {
    fn resolve(&self, addr: u64, inlines: bool) -> Lookup {
        // Go text: pclntab is what the runtime itself uses, inline chains included.
        if let Some(go) = &self.go {
            if go.covers(addr) {
                return go.lookup(addr, inlines);
            }
        }
        // Demangling costs more than the lookup itself: only when DWARF has no name.
        let sym = || self.elf.lookup(addr).map(|s| demangle(&s.name));
        if let Some(dwarf) = &self.dwarf {
            let mut frames = dwarf.frames(addr, inlines).unwrap_or_default();
            if !frames.is_empty() {
                // DIEs without a name (and line rows outside any subprogram) take the symbol
                // table's; with neither, the address is padding between functions.
                for f in frames.iter_mut().filter(|f| f.function.is_empty()) {
                    f.function = sym()?;
                }
                return Ok(frames);
            }
            // No subprogram covers it (e.g. hand-written assembly): symbol plus line row.
            let function = sym()?;
            let (file, line) = dwarf.location(addr).unwrap_or((None, None));
            return Ok(vec![Frame {
                function,
                file,
                line,
                inlined: false,
            }]);
        }
        Ok(vec![Frame {
            function: sym()?,
            file: None,
            line: None,
            inlined: false,
        }])
    }
}

/// Resolves addresses of many binaries, caching parsed state. Not `Sync`: drive it from one
/// thread (e.g. a blocking task) and send it requests.
pub struct Symbolizer {
    config: SymbolizerConfig,
    contexts: Lru<BinaryId, Context>,
}

impl Symbolizer {
    /// A symbolizer with empty caches.
    pub fn new(config: SymbolizerConfig) -> Self {
        let contexts = Lru::new(config.cache_binaries);
        Symbolizer { config, contexts }
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &SymbolizerConfig {
        &self.config
    }

    /// Resolves ELF virtual addresses (already normalized; pass `pc - 1` for return addresses).
    /// Fails only when the binary cannot be parsed at all; per-address failures are [`crate::Miss`].
    pub fn symbolize(&mut self, binary: &Binary, addrs: &[u64]) -> Result<Vec<Lookup>, Error> {
        let mut out = Vec::with_capacity(addrs.len());
        self.symbolize_each(binary, addrs, |_, lookup| out.push(lookup.clone()))?;
        Ok(out)
    }

    /// As [`Symbolizer::symbolize`], but hands each result to `f(index, &lookup)` without
    /// copying it: the fast path for callers that intern names anyway.
    pub fn symbolize_each(
        &mut self,
        binary: &Binary,
        addrs: &[u64],
        mut f: impl FnMut(usize, &Lookup),
    ) -> Result<(), Error> {
        let ctx = match self.contexts.get_mut(binary.id()) {
            Some(ctx) => ctx,
            None => {
                let ctx = Context::build(binary, &self.config)?;
                self.contexts.insert(binary.id().clone(), ctx)
            }
        };
        let cap = self.config.cache_addresses;
        let inlines = self.config.inlines;
        for (i, &addr) in addrs.iter().enumerate() {
            if cap == 0 {
                f(i, &ctx.parsed.resolve(addr, inlines));
                continue;
            }
            if ctx.addresses.len() >= cap && !ctx.addresses.contains_key(&addr) {
                ctx.addresses.clear();
            }
            let entry = match ctx.addresses.entry(addr) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let r = ctx.parsed.resolve(addr, inlines);
                    v.insert(r)
                }
            };
            f(i, entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Symbolizer>();
        assert_send::<std::sync::Arc<Binary>>();
        fn assert_sync<T: Sync>() {}
        assert_sync::<Binary>();
    }
}
