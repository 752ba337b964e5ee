//! Decodes the trace context the eBPF program copied into a sample into pprof labels.
use std::sync::Arc;

use profiler_common::{
    RawContext, CONTEXT_FLAG_IDS, CONTEXT_SOURCE_GO, CONTEXT_SOURCE_OTEL, MAX_LABELS,
};

/// Which extra (non-trace) labels to keep. Trace and span ids are always kept.
#[derive(Debug, Clone, Default)]
pub struct LabelFilter {
    /// Empty means every label is kept.
    pub allow: Vec<String>,
}

impl LabelFilter {
    fn keeps(&self, key: &str) -> bool {
        key == "trace_id"
            || key == "span_id"
            || self.allow.is_empty()
            || self.allow.iter().any(|a| a == key)
    }
}

/// Key/value string labels, sorted by key.
pub type Labels = Vec<(Arc<str>, Arc<str>)>;

/// The bytes that make two contexts equal, for aggregation keys. Empty without a context.
pub fn context_key(ctx: &RawContext) -> Box<[u8]> {
    match ctx.source {
        CONTEXT_SOURCE_OTEL if ctx.flags & CONTEXT_FLAG_IDS != 0 => {
            let mut k = Vec::with_capacity(25);
            k.push(ctx.source);
            k.extend_from_slice(&ctx.trace_id);
            k.extend_from_slice(&ctx.span_id);
            k.into()
        }
        CONTEXT_SOURCE_GO => {
            let mut k = vec![ctx.source];
            for l in ctx
                .labels
                .iter()
                .take(usize::from(ctx.n_labels).min(MAX_LABELS))
            {
                let (kl, vl) = (
                    usize::from(l.key_len).min(l.key.len()),
                    usize::from(l.value_len).min(l.value.len()),
                );
                k.push(kl as u8);
                k.extend_from_slice(&l.key[..kl]);
                k.push(vl as u8);
                k.extend_from_slice(&l.value[..vl]);
            }
            k.into()
        }
        _ => Box::new([]),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// pprof string labels for a sample's context, sorted by key.
pub fn decode(ctx: &RawContext, filter: &LabelFilter) -> Labels {
    let mut out: Labels = Vec::new();
    match ctx.source {
        CONTEXT_SOURCE_OTEL if ctx.flags & CONTEXT_FLAG_IDS != 0 && ctx.trace_id != [0; 16] => {
            out.push((Arc::from("trace_id"), Arc::from(hex(&ctx.trace_id))));
            out.push((Arc::from("span_id"), Arc::from(hex(&ctx.span_id))));
        }
        CONTEXT_SOURCE_GO => {
            for l in ctx
                .labels
                .iter()
                .take(usize::from(ctx.n_labels).min(MAX_LABELS))
            {
                let key =
                    String::from_utf8_lossy(&l.key[..usize::from(l.key_len).min(l.key.len())])
                        .into_owned();
                if key.is_empty() || !filter.keeps(&key) {
                    continue;
                }
                let value = String::from_utf8_lossy(
                    &l.value[..usize::from(l.value_len).min(l.value.len())],
                )
                .into_owned();
                out.push((Arc::from(key), Arc::from(value)));
            }
        }
        _ => {}
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::RawLabel;

    fn empty() -> RawContext {
        // SAFETY: RawContext is plain integers; all-zero is a valid "no context" value.
        unsafe { std::mem::zeroed() }
    }

    fn label(k: &str, v: &str) -> RawLabel {
        // SAFETY: as above.
        let mut l: RawLabel = unsafe { std::mem::zeroed() };
        l.key[..k.len()].copy_from_slice(k.as_bytes());
        l.value[..v.len()].copy_from_slice(v.as_bytes());
        l.key_len = k.len() as u8;
        l.value_len = v.len() as u8;
        l
    }

    #[test]
    fn otel_ids_become_lowercase_hex() {
        let mut c = empty();
        c.source = CONTEXT_SOURCE_OTEL;
        c.flags = CONTEXT_FLAG_IDS;
        c.trace_id = [0xAB; 16];
        c.span_id = [0x01; 8];
        let l = decode(&c, &LabelFilter::default());
        assert_eq!(&*l[0].0, "span_id");
        assert_eq!(&*l[0].1, "0101010101010101");
        assert_eq!(&*l[1].1, "ab".repeat(16));
        assert_eq!(context_key(&c).len(), 25);
        assert!(decode(&empty(), &LabelFilter::default()).is_empty());
        assert!(context_key(&empty()).is_empty());
    }

    #[test]
    fn go_labels_filtered_and_lengths_clamped() {
        let mut c = empty();
        c.source = CONTEXT_SOURCE_GO;
        c.labels[0] = label("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
        c.labels[1] = label("endpoint", "/api");
        let mut bogus = label("x", "y");
        bogus.key_len = 200;
        bogus.value_len = 255;
        c.labels[2] = bogus;
        c.n_labels = 200;
        let all = decode(&c, &LabelFilter::default());
        assert_eq!(all.len(), 3);
        let only = decode(
            &c,
            &LabelFilter {
                allow: vec!["nothing".into()],
            },
        );
        assert_eq!(only.len(), 1);
        assert_eq!(&*only[0].0, "trace_id");
        assert!(!context_key(&c).is_empty());
    }
}
