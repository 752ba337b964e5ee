//! Drains the ring buffer into the aggregator.
use std::mem::size_of;

use aya::maps::{MapData, RingBuf};
use profiler_common::RawSample;

use crate::{aggregate::Aggregator, processes::Processes};

/// Records read so far, including malformed ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderStats {
    pub delivered: u64,
    pub malformed: u64,
}

/// Reads every record currently in the ring. Returns how many were read.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    agg: &mut Aggregator,
    processes: &mut Processes,
    stats: &mut ReaderStats,
) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        stats.delivered += 1;
        match decode(&item) {
            Some(sample) => agg.add(&sample, processes),
            None => stats.malformed += 1,
        }
    }
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

    #[test]
    fn short_records_are_rejected() {
        assert!(decode(&[0u8; 16]).is_none());
        let buf = vec![0u8; size_of::<RawSample>() + 3];
        let s = decode(&buf[1..]).unwrap();
        assert_eq!((s.pid, s.user_len), (0, 0));
    }
}
