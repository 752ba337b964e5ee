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
    let mut out = itanium(core)?;
    if let Some(fixed) = fix_template_constructor(core, &out) {
        out = fixed;
    }
    if !suffix.is_empty() {
        out.push_str(" [clone ");
        out.push_str(suffix);
        out.push(']');
    }
    Some(out)
}

fn itanium(mangled: &str) -> Option<String> {
    let sym = cpp_demangle::Symbol::new(mangled).ok()?;
    sym.demangle(&cpp_demangle::DemangleOptions::default()).ok()
}

/// cpp_demangle (0.4 and 0.5) reads the first parameter of a templated constructor or
/// destructor (`C1I...E`) as a return type, which such functions do not have, and drops it.
/// Inserting an explicit `v` return type after the name makes it parse the real parameters.
/// The insertion point is where the name ends: the candidate whose output keeps the same name
/// and gains exactly one leading parameter.
fn fix_template_constructor(mangled: &str, out: &str) -> Option<String> {
    let b = mangled.as_bytes();
    let is_ctor_template = b
        .windows(3)
        .any(|w| matches!(w[0], b'C' | b'D') && w[1].is_ascii_digit() && w[2] == b'I');
    if !is_ctor_template {
        return None;
    }
    let (name, params) = out.rsplit_once('(').filter(|(_, p)| p.ends_with(')'))?;
    let params = params.strip_suffix(')')?;
    for p in (3..b.len()).filter(|&p| b[p - 1] == b'E').take(64) {
        let candidate = format!("{}v{}", &mangled[..p], &mangled[p..]);
        let Some(fixed) = itanium(&candidate) else {
            continue;
        };
        let Some((fname, fparams)) = fixed.rsplit_once('(') else {
            continue;
        };
        let fparams = fparams.strip_suffix(')').unwrap_or(fparams);
        let gained_one = if params.is_empty() {
            !fparams.is_empty() && !fparams.contains(", ")
        } else {
            fparams.ends_with(&format!(", {params}"))
        };
        if fname == name && gained_one {
            return Some(fixed);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_legacy_hides_hash() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(
            demangle("_ZN66_$LT$alloc..vec..Vec$LT$T$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17h1a2b3c4d5e6f7a8bE"),
            "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop"
        );
    }

    #[test]
    fn rust_v0() {
        assert_eq!(
            demangle("_RNvCs15kBYyAo9fc_7mycrate7example"),
            "mycrate::example"
        );
        assert_eq!(
            demangle("_RNvNtCs15kBYyAo9fc_7mycrate3foo3bar"),
            "mycrate::foo::bar"
        );
    }

    #[test]
    fn cpp() {
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("_Z3addii"), "add(int, int)");
        assert_eq!(
            demangle("_ZNSt6vectorIiSaIiEE9push_backERKi"),
            "std::vector<int, std::allocator<int> >::push_back(int const&)"
        );
        // A templated constructor: the first parameter must not be taken for a return type.
        assert_eq!(
            demangle("_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEC1IS3_EEPKcRKS3_"),
            "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >::basic_string<std::allocator<char> >(char const*, std::allocator<char> const&)"
        );
    }

    #[test]
    fn others_unchanged() {
        for s in ["main", "runtime.mallocgc", "_Zgarbage", "", "_R", "_ZN"] {
            assert_eq!(demangle(s), s);
        }
    }
}
