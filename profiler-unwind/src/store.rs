//! Bookkeeping for the kernel's table maps: where each binary's rows go in the one shared row
//! array, which table id describes them, and one copy per binary however many processes map
//! it. The caller does the map writes; this decides what to write where, within a fixed row
//! budget.

use crate::compile::CompiledTable;
use profiler_common::unwind::UnwindTableInfo;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Why a table could not be placed.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No free extent is long enough (until other tables are released).
    #[error("no room for {rows} rows ({free} free in total, fragmented or not)")]
    OutOfRows {
        /// Rows the table needs.
        rows: u32,
        /// Free rows in all extents together.
        free: u32,
    },
    /// Every entry of the table-info array is taken; carries their number.
    #[error("all {0} table ids are in use")]
    OutOfTableIds(u32),
    /// The table can never fit, however much is released; carries its row count.
    #[error("table of {0} rows is larger than the whole row array")]
    TooLarge(usize),
}

/// Where a table was put: write `rows` at `info.first_row` in the row array and `info` at
/// index `table_id` in the table-info array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into the table-info array.
    pub table_id: u32,
    /// Where the rows start and how many there are.
    pub info: UnwindTableInfo,
    /// True when the table was already loaded (nothing to write).
    pub shared: bool,
}

struct Entry<K> {
    key: K,
    info: UnwindTableInfo,
    users: u32,
}

/// Row-array extents and table ids, keyed by binary identity `K` (build id, or dev+inode).
pub struct TableStore<K> {
    capacity: u32,
    /// Free extents: first row -> length. Adjacent extents are always coalesced.
    free: BTreeMap<u32, u32>,
    tables: Vec<Option<Entry<K>>>,
    free_ids: Vec<u32>,
    by_key: HashMap<K, u32>,
}

impl<K: Hash + Eq + Clone> TableStore<K> {
    /// `capacity` rows in the row array, `max_tables` entries in the table-info array.
    pub fn new(capacity: u32, max_tables: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        TableStore {
            capacity,
            free,
            tables: Vec::new(),
            free_ids: (0..max_tables).rev().collect(),
            by_key: HashMap::new(),
        }
    }

    /// One more user of the table already loaded under `key`, if there is one: lets callers
    /// skip compiling a binary that is already in the map.
    pub fn share(&mut self, key: &K) -> Option<Placement> {
        let &id = self.by_key.get(key)?;
        let entry = self.tables.get_mut(id as usize)?.as_mut()?;
        entry.users += 1;
        Some(Placement {
            table_id: id,
            info: entry.info,
            shared: true,
        })
    }

    /// Reserves room for `table` under `key`, or shares the copy already there.
    pub fn insert(&mut self, key: &K, table: &CompiledTable) -> Result<Placement, StoreError> {
        if let Some(&id) = self.by_key.get(key) {
            if let Some(Some(entry)) = self.tables.get_mut(id as usize) {
                entry.users += 1;
                return Ok(Placement {
                    table_id: id,
                    info: entry.info,
                    shared: true,
                });
            }
        }
        let rows = u32::try_from(table.rows.len())
            .ok()
            .filter(|&n| n <= self.capacity)
            .ok_or(StoreError::TooLarge(table.rows.len()))?;
        let Some(&id) = self.free_ids.last() else {
            return Err(StoreError::OutOfTableIds(self.tables.len() as u32));
        };
        let first_row = self.allocate(rows)?;
        self.free_ids.pop();
        let info = table.info(first_row);
        let slot = id as usize;
        if self.tables.len() <= slot {
            self.tables.resize_with(slot + 1, || None);
        }
        self.tables[slot] = Some(Entry {
            key: key.clone(),
            info,
            users: 1,
        });
        self.by_key.insert(key.clone(), id);
        Ok(Placement {
            table_id: id,
            info,
            shared: false,
        })
    }

    /// Drops one user of `table_id`; returns true when the last one left and its rows and id
    /// were freed (the caller may then clear the info entry).
    pub fn release(&mut self, table_id: u32) -> bool {
        let Some(slot) = self.tables.get_mut(table_id as usize) else {
            return false;
        };
        let Some(entry) = slot else { return false };
        entry.users -= 1;
        if entry.users > 0 {
            return false;
        }
        let Some(entry) = slot.take() else {
            return false;
        };
        self.by_key.remove(&entry.key);
        self.free_ids.push(table_id);
        self.deallocate(entry.info.first_row, entry.info.row_count);
        true
    }

    /// Free rows in all extents together (not necessarily one extent).
    pub fn free_rows(&self) -> u32 {
        self.free.values().sum()
    }

    /// First fit.
    fn allocate(&mut self, rows: u32) -> Result<u32, StoreError> {
        let Some((&start, &len)) = self.free.iter().find(|(_, &len)| len >= rows) else {
            return Err(StoreError::OutOfRows {
                rows,
                free: self.free_rows(),
            });
        };
        self.free.remove(&start);
        if len > rows {
            self.free.insert(start + rows, len - rows);
        }
        Ok(start)
    }

    fn deallocate(&mut self, mut start: u32, mut len: u32) {
        if len == 0 {
            return;
        }
        // Merge with the extent just before and just after.
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back() {
            if prev + prev_len == start {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::unwind::UnwindRow;

    fn table(rows: usize) -> CompiledTable {
        CompiledTable {
            pc_base: 0x1000,
            rows: vec![UnwindRow::default(); rows],
            ..Default::default()
        }
    }

    #[test]
    fn shares_allocates_and_frees() {
        let mut store = TableStore::new(100, 4);
        let a = store.insert(&"libc", &table(40)).unwrap();
        assert_eq!(
            (a.info.first_row, a.info.row_count, a.shared),
            (0, 40, false)
        );
        let a2 = store.insert(&"libc", &table(40)).unwrap();
        assert_eq!((a2.table_id, a2.shared), (a.table_id, true));
        assert_eq!(store.share(&"exe"), None);
        assert_eq!(
            store.share(&"libc").map(|p| (p.table_id, p.shared)),
            Some((a.table_id, true))
        );
        assert!(!store.release(a.table_id));
        let b = store.insert(&"exe", &table(50)).unwrap();
        assert_eq!(b.info.first_row, 40);
        assert_eq!(
            store.insert(&"big", &table(20)),
            Err(StoreError::OutOfRows { rows: 20, free: 10 })
        );
        assert!(!store.release(a.table_id));
        assert!(store.release(a.table_id));
        assert_eq!(store.free_rows(), 50);
        // The freed 40 rows and the tail 10 are not adjacent: 45 does not fit.
        assert!(store.insert(&"big", &table(45)).is_err());
        assert!(store.release(b.table_id));
        // Everything coalesced back into one extent.
        let c = store.insert(&"big", &table(100)).unwrap();
        assert_eq!(c.info.first_row, 0);
        assert_eq!(
            store.insert(&"x", &table(101)),
            Err(StoreError::TooLarge(101))
        );
        assert!(!store.release(99));
    }

    #[test]
    fn table_ids_are_bounded_and_reused() {
        let mut store = TableStore::new(1000, 2);
        let a = store.insert(&1, &table(1)).unwrap();
        store.insert(&2, &table(1)).unwrap();
        assert_eq!(
            store.insert(&3, &table(1)),
            Err(StoreError::OutOfTableIds(2))
        );
        store.release(a.table_id);
        assert_eq!(store.insert(&3, &table(1)).unwrap().table_id, a.table_id);
    }
}
