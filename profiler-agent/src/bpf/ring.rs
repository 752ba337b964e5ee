//! Reads the sample ring buffer.
use std::mem::size_of;

use aya::maps::{MapData, RingBuf};
use profiler_common::RawSample;

use crate::stats::{AgentCounter, AgentStats};

/// Hands every record currently in the ring to `on_sample`, counting what it reads and what
/// is malformed. Returns how many records were read.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    stats: &AgentStats,
    mut on_sample: impl FnMut(&RawSample),
) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        match decode(&item) {
            Some(sample) => on_sample(&sample),
            None => stats.inc(AgentCounter::MalformedRecords),
        }
    }
    stats.add(AgentCounter::Delivered, n);
    n
}

/// Copies a record out of the ring; `None` if it is too short to be a sample.
pub fn decode(bytes: &[u8]) -> Option<RawSample> {
    if bytes.len() < size_of::<RawSample>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<RawSample>() bytes, RawSample is plain old data
    // for which every bit pattern is valid, and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawSample>()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::{RawContext, RawLabel, COMM_LEN, MAX_LABELS, MAX_STACK_DEPTH};

    /// A record with a distinct value in every field, laid out the way the kernel writes it
    /// (field by field in declaration order, little-endian), so a field read from the wrong
    /// offset or with the wrong width shows up.
    fn kernel_record() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes()); // time_ns
        for v in [4242u32, 4243, 1, 3, 2, 0b0101] {
            b.extend_from_slice(&v.to_le_bytes()); // pid tid cpu user_len kernel_len flags
        }
        b.extend_from_slice(b"comm-of-thread\0\0"); // comm
        for i in 0..MAX_STACK_DEPTH as u64 {
            b.extend_from_slice(&(0x5500_0000_0000 + i).to_le_bytes());
        }
        for i in 0..MAX_STACK_DEPTH as u64 {
            b.extend_from_slice(&(0xffff_ffff_8100_0000 + i).to_le_bytes());
        }
        b.extend_from_slice(&[2, 1, 0x01, 1, 0, 0, 0, 0]); // source flags trace_flags n_labels pad
        b.extend((0..16).map(|i| 0xa0 + i)); // trace_id
        b.extend((0..8).map(|i| 0xb0 + i)); // span_id
        for l in 0..MAX_LABELS as u8 {
            b.extend_from_slice(&[3, 5, 0, 0, 0, 0, 0, 0]);
            b.extend((0..16).map(|i| l * 16 + i));
            b.extend((0..48).map(|i| 0x80 | (l + i)));
        }
        assert_eq!(b.len(), size_of::<RawSample>(), "test layout out of date");
        b
    }

    #[test]
    fn every_field_decodes_from_its_own_bytes() {
        let mut buf = vec![0xee];
        buf.extend(kernel_record());
        buf.extend([0xee; 3]); // ring records are padded to 8 bytes
        let s = decode(&buf[1..]).expect("a full record");
        assert_eq!(s.time_ns, 0x1122_3344_5566_7788);
        assert_eq!(
            (s.pid, s.tid, s.cpu, s.user_len, s.kernel_len, s.flags),
            (4242, 4243, 1, 3, 2, 0b0101)
        );
        assert_eq!(&s.comm, b"comm-of-thread\0\0");
        assert_eq!(s.comm.len(), COMM_LEN);
        assert_eq!(s.user_stack[0], 0x5500_0000_0000);
        assert_eq!(s.user_stack[MAX_STACK_DEPTH - 1], 0x5500_0000_0000 + 126);
        assert_eq!(s.kernel_stack[0], 0xffff_ffff_8100_0000);
        assert_eq!(
            s.kernel_stack[MAX_STACK_DEPTH - 1],
            0xffff_ffff_8100_0000 + 126
        );
        let c: RawContext = s.context;
        assert_eq!((c.source, c.flags, c.trace_flags, c.n_labels), (2, 1, 1, 1));
        assert_eq!(c.trace_id[0], 0xa0);
        assert_eq!(c.trace_id[15], 0xaf);
        assert_eq!(c.span_id, [0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7]);
        let last: RawLabel = c.labels[MAX_LABELS - 1];
        assert_eq!((last.key_len, last.value_len), (3, 5));
        assert_eq!(last.key[0], 7 * 16);
        assert_eq!(last.value[47], 0x80 | (7 + 47));
    }

    #[test]
    fn short_records_are_rejected() {
        let full = kernel_record();
        assert!(decode(&full[..full.len() - 1]).is_none());
        assert!(decode(&[]).is_none());
    }
}
