//! Demangling of Rust (legacy and v0, hash hidden) and C++ (Itanium) names.

/// Demangles `name` if it is a Rust or C++ symbol; anything else comes back unchanged.
pub fn demangle(name: &str) -> String {
    // Rust legacy names also start with `_ZN`, so Rust goes first.
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        // `{:#}` drops the `::h0123...` hash.
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Some(d) = demangle_cpp(name) {
            return d;
        }
    }
    name.to_owned()
}

fn demangle_cpp(name: &str) -> Option<String> {
    // Linkers append `@VERSION` or `.cold`-style suffixes that are not part of the mangling.
    let (core, suffix) = match name.find(['@', '.']) {
        Some(i) if i > 2 => name.split_at(i),
        _ => (name, ""),
    };
    let sym = cpp_demangle::Symbol::new(core).ok()?;
    let opts = cpp_demangle::DemangleOptions::default();
    let mut out = sym.demangle(&opts).ok()?;
    if !suffix.is_empty() {
        out.push_str(" [clone ");
        out.push_str(suffix);
        out.push(']');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_legacy_hides_hash() {
        assert_eq!(demangle("_ZN4core3fmt5write17h0123456789abcdefE"), "core::fmt::write");
        assert_eq!(
            demangle("_ZN66_$LT$alloc..vec..Vec$LT$T$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17h1a2b3c4d5e6f7a8bE"),
            "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop"
        );
    }

    #[test]
    fn rust_v0() {
        assert_eq!(demangle("_RNvCs15kBYyAo9fc_7mycrate7example"), "mycrate::example");
        assert_eq!(demangle("_RNvNtCs15kBYyAo9fc_7mycrate3foo3bar"), "mycrate::foo::bar");
    }

    #[test]
    fn cpp() {
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("_Z3addii"), "add(int, int)");
        assert_eq!(demangle("_ZNSt6vectorIiSaIiEE9push_backERKi"), "std::vector<int, std::allocator<int> >::push_back(int const&)");
    }

    #[test]
    fn others_unchanged() {
        for s in ["main", "runtime.mallocgc", "_Zgarbage", "", "_R", "_ZN"] {
            assert_eq!(demangle(s), s);
        }
    }
}
