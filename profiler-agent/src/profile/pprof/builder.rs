//! Builds a pprof `Profile` with interned strings, functions, locations and mappings.
//! Ids are dense from 1 in table order and `string_table[0]` is "", which satisfies the
//! strictest consumers (Parca's validation) as well as `go tool pprof`.
use std::collections::HashMap;

use super::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// Collects one profile's tables.
#[derive(Default)]
pub struct ProfileBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<(u64, u64, bool), u64>,
    mappings: Vec<Mapping>,
    samples: Vec<Sample>,
}

/// What a mapping is, before it gets an id.
pub struct MappingSpec<'a> {
    /// Lowest address.
    pub memory_start: u64,
    /// One past the highest address.
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    pub file_offset: u64,
    /// Path or pseudo name.
    pub filename: &'a str,
    /// GNU or Go build id, hex; may be empty.
    pub build_id: &'a str,
}

/// One frame of a location, innermost first.
pub struct LineSpec<'a> {
    /// Function name.
    pub function: &'a str,
    /// Source file; may be empty.
    pub filename: &'a str,
    /// Line; 0 when unknown.
    pub line: i64,
}

impl ProfileBuilder {
    /// An empty profile whose string table starts with "".
    pub fn new() -> Self {
        let mut b = ProfileBuilder::default();
        b.string("");
        b
    }

    /// The string's index, interned.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    /// A new mapping; returns its id.
    pub fn add_mapping(&mut self, spec: MappingSpec<'_>) -> u64 {
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(spec.filename);
        let build_id = self.string(spec.build_id);
        self.mappings.push(Mapping {
            id,
            memory_start: spec.memory_start,
            memory_limit: spec.memory_limit,
            file_offset: spec.file_offset,
            filename,
            build_id,
            ..Default::default()
        });
        id
    }

    /// A mapping to adjust (its range grows with the addresses seen).
    pub fn mapping_mut(&mut self, id: u64) -> Option<&mut Mapping> {
        self.mappings.get_mut(id.checked_sub(1)? as usize)
    }

    fn function(&mut self, name: &str, filename: &str) -> u64 {
        let name = self.string(name);
        let filename = self.string(filename);
        if let Some(&id) = self.function_ids.get(&(name, filename)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert((name, filename), id);
        id
    }

    /// The location for `address` in `mapping`; `is_leaf` keeps a leaf IP apart from a return
    /// address with the same value, since they symbolize differently. `lines` is only used
    /// the first time a location is seen.
    pub fn location(
        &mut self,
        mapping: u64,
        address: u64,
        is_leaf: bool,
        lines: &[LineSpec<'_>],
    ) -> u64 {
        if let Some(&id) = self.location_ids.get(&(mapping, address, is_leaf)) {
            return id;
        }
        let line = lines
            .iter()
            .map(|l| Line {
                function_id: self.function(l.function, l.filename),
                line: l.line,
                column: 0,
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id: mapping,
            address,
            line,
            is_folded: false,
        });
        self.location_ids.insert((mapping, address, is_leaf), id);
        id
    }

    /// A location whose only frame is a name: a kernel symbol or an unsymbolized address.
    pub fn named_location(
        &mut self,
        mapping: u64,
        address: u64,
        is_leaf: bool,
        function: &str,
        filename: &str,
    ) -> u64 {
        self.location(
            mapping,
            address,
            is_leaf,
            &[LineSpec {
                function,
                filename,
                line: 0,
            }],
        )
    }

    /// A string label.
    pub fn str_label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.string(key),
            str: self.string(value),
            num: 0,
            num_unit: 0,
        }
    }

    /// A numeric label.
    pub fn num_label(&mut self, key: &str, value: i64) -> Label {
        Label {
            key: self.string(key),
            str: 0,
            num: value,
            num_unit: 0,
        }
    }

    /// A sample: locations innermost first, values in sample-type order.
    pub fn add_sample(&mut self, location_id: Vec<u64>, value: Vec<i64>, label: Vec<Label>) {
        self.samples.push(Sample {
            location_id,
            value,
            label,
        });
    }

    /// Finishes a CPU profile: `[samples/count, cpu/nanoseconds]`, with cpu last because
    /// speedscope shows the last sample type.
    pub fn finish(
        mut self,
        period_ns: i64,
        time_nanos: i64,
        duration_nanos: i64,
        comments: &[String],
    ) -> Profile {
        let sample_type = vec![
            ValueType {
                r#type: self.string("samples"),
                unit: self.string("count"),
            },
            ValueType {
                r#type: self.string("cpu"),
                unit: self.string("nanoseconds"),
            },
        ];
        let period_type = Some(ValueType {
            r#type: self.string("cpu"),
            unit: self.string("nanoseconds"),
        });
        let comment = comments.iter().map(|c| self.string(c)).collect();
        Profile {
            sample_type,
            sample: self.samples,
            mapping: self.mappings,
            location: self.locations,
            function: self.functions,
            string_table: self.strings,
            drop_frames: 0,
            keep_frames: 0,
            time_nanos,
            duration_nanos,
            period_type,
            period: period_ns,
            comment,
            default_sample_type: 0,
            doc_url: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_strings_start_empty() {
        let mut b = ProfileBuilder::new();
        let m = b.add_mapping(MappingSpec {
            memory_start: 0x1000,
            memory_limit: 0x2000,
            file_offset: 0,
            filename: "/bin/x",
            build_id: "ab",
        });
        let l1 = b.location(
            m,
            0x1010,
            true,
            &[LineSpec {
                function: "f",
                filename: "x.c",
                line: 3,
            }],
        );
        let l2 = b.location(
            m,
            0x1010,
            false,
            &[LineSpec {
                function: "f",
                filename: "x.c",
                line: 2,
            }],
        );
        let l3 = b.location(m, 0x1010, true, &[]);
        assert_eq!((m, l1, l2, l3), (1, 1, 2, 1));
        let label = b.num_label("pid", 7);
        b.add_sample(vec![l1, l2], vec![1, 10], vec![label]);
        let p = b.finish(10, 0, 0, &[]);
        assert_eq!(p.string_table[0], "");
        assert_eq!(
            p.function.len(),
            1,
            "same name and file intern to one function"
        );
        for (i, f) in p.function.iter().enumerate() {
            assert_eq!(f.id, i as u64 + 1);
        }
        for (i, l) in p.location.iter().enumerate() {
            assert_eq!(l.id, i as u64 + 1);
        }
        assert!(p
            .sample
            .iter()
            .all(|s| s.value.len() == p.sample_type.len()));
        let round =
            crate::profile::pprof::decode_gzip(&crate::profile::pprof::encode_gzip(&p).unwrap())
                .unwrap();
        assert_eq!(round, p);
    }
}
