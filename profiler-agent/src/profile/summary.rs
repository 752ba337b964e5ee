//! The one-line summary logged at each write.
use std::collections::HashMap;

use crate::profile::pprof::proto::Profile;

/// The `n` functions with the most self (leaf) samples, with their sample counts.
pub fn top_functions(p: &Profile, n: usize) -> Vec<(String, i64)> {
    let loc_fn: HashMap<u64, i64> = p
        .location
        .iter()
        .filter_map(|l| Some((l.id, l.line.first()?.function_id)))
        .filter_map(|(loc, f)| Some((loc, p.function.get(f.checked_sub(1)? as usize)?.name)))
        .collect();
    let mut self_counts: HashMap<i64, i64> = HashMap::new();
    for s in &p.sample {
        if let Some(name) = s.location_id.first().and_then(|l| loc_fn.get(l)) {
            *self_counts.entry(*name).or_default() += s.value.first().copied().unwrap_or(0);
        }
    }
    let mut top: Vec<_> = self_counts
        .into_iter()
        .map(|(name, c)| {
            (
                p.string_table
                    .get(name as usize)
                    .cloned()
                    .unwrap_or_default(),
                c,
            )
        })
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(n);
    top
}

/// `name (count), …`.
pub fn format_top(top: &[(String, i64)]) -> String {
    top.iter()
        .map(|(n, c)| format!("{n} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}
