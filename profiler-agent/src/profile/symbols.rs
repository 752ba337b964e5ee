//! The symbol sources that live as long as the agent: the user-space symbolizer and the
//! kernel's symbol table, reloaded when the set of loaded modules changes.
use crate::error_chain::chain;
use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
};

use symbolizer::{Kallsyms, Symbolizer};
use tracing::{info, warn};

/// User and kernel symbol sources.
pub struct Symbols {
    /// ELF, DWARF and Go symbols, cached per binary.
    pub symbolizer: Symbolizer,
    /// `/proc/kallsyms`, or `None` when it is unreadable or empty (all addresses zero).
    pub kallsyms: Option<Kallsyms>,
    kallsyms_path: PathBuf,
    modules_path: PathBuf,
    /// Hash of the modules list the loaded kallsyms belongs to.
    modules_hash: Option<u64>,
}

impl Symbols {
    /// Loads kallsyms now. `modules_path` is `/proc/modules`: when its contents change,
    /// kernel modules were loaded or removed and kallsyms is read again.
    pub fn new(symbolizer: Symbolizer, kallsyms_path: &Path, modules_path: &Path) -> Self {
        let mut symbols = Symbols {
            symbolizer,
            kallsyms: None,
            kallsyms_path: kallsyms_path.to_path_buf(),
            modules_path: modules_path.to_path_buf(),
            modules_hash: None,
        };
        symbols.modules_hash = symbols.read_modules_hash();
        symbols.kallsyms = load_kallsyms(&symbols.kallsyms_path);
        symbols
    }

    /// Reloads kallsyms if the module list changed since it was loaded; true if it did.
    pub fn refresh_kernel(&mut self) -> bool {
        let now = self.read_modules_hash();
        if now == self.modules_hash {
            return false;
        }
        info!(path = %self.kallsyms_path.display(), "kernel modules changed; reloading kallsyms");
        self.modules_hash = now;
        self.kallsyms = load_kallsyms(&self.kallsyms_path);
        true
    }

    fn read_modules_hash(&self) -> Option<u64> {
        // Only names and load addresses matter; the use counts in the middle change often.
        let text = std::fs::read_to_string(&self.modules_path).ok()?;
        let mut h = DefaultHasher::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            fields.next().hash(&mut h);
            fields.last().hash(&mut h);
        }
        Some(h.finish())
    }
}

fn load_kallsyms(path: &Path) -> Option<Kallsyms> {
    match Kallsyms::load(path) {
        Ok(k) if !k.is_empty() => Some(k),
        Ok(_) => {
            warn!(path = %path.display(), "kallsyms is empty; kernel frames stay unsymbolized");
            None
        }
        Err(error) => {
            warn!(path = %path.display(), error = %chain(&error), "cannot read kallsyms; kernel frames stay unsymbolized");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use symbolizer::SymbolizerConfig;

    #[test]
    fn kallsyms_is_reloaded_when_modules_change_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let kallsyms = dir.path().join("kallsyms");
        let modules = dir.path().join("modules");
        std::fs::write(
            &kallsyms,
            "ffffffff81000000 T _text\nffffffff81001000 T old_fn\n",
        )
        .unwrap();
        std::fs::write(&modules, "ext4 1056768 1 - Live 0xffffffffc0a00000\n").unwrap();
        let mut s = Symbols::new(
            Symbolizer::new(SymbolizerConfig::default()),
            &kallsyms,
            &modules,
        );
        let name = |s: &Symbols| {
            s.kallsyms
                .as_ref()
                .and_then(|k| k.lookup(0xffffffff81001010).ok())
                .map(|sym| sym.name.to_string())
        };
        assert_eq!(name(&s).as_deref(), Some("old_fn"));

        // Use counts change all the time; that is not a module change.
        std::fs::write(&modules, "ext4 1056768 3 - Live 0xffffffffc0a00000\n").unwrap();
        std::fs::write(
            &kallsyms,
            "ffffffff81000000 T _text\nffffffff81001000 T new_fn\n",
        )
        .unwrap();
        assert!(!s.refresh_kernel());
        assert_eq!(name(&s).as_deref(), Some("old_fn"));

        std::fs::write(
            &modules,
            "ext4 1056768 3 - Live 0xffffffffc0a00000\nfuse 200704 1 - Live 0xffffffffc0b00000\n",
        )
        .unwrap();
        assert!(s.refresh_kernel());
        assert_eq!(name(&s).as_deref(), Some("new_fn"));
        assert!(!s.refresh_kernel());
    }
}
