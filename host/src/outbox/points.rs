//! Checked points on their way from an app's thread to the outbox writer,
//! in a compact binary form that the writer encodes to JSON.
//!
//! Why not JSON straight away: formatting numbers (the time and every
//! field) was about a quarter of what a `record-batch` cost on the app's
//! thread, which is the thread that limits ingest (P2 in BENCHMARKS.md).
//! Here a field is copied, not formatted: the writer formats it, on its
//! own thread, as it takes the batch ([`Points::encode_json`]).
//!
//! The form is private to this module: a point is `P` and its time (u64,
//! little-endian); each field a tag byte, its name (u32 length, bytes) and
//! its value (1 byte for a boolean, 8 for a number, u32 length and bytes
//! for text and bytes). Only [`Points`] writes it and reads it back.

use crate::bindings::Value;

/// Points of one or more calls, checked, in the order they were recorded.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Points {
    log: Vec<u8>,
    count: usize,
    /// About how long their JSON will be: what the outbox's quota reserves
    /// for them before they are written (see `Usage::reserve`).
    json_estimate: u64,
}

const POINT: u8 = b'P';
const BOOLEAN: u8 = b'b';
const INTEGER: u8 = b'i';
const NUMBER: u8 = b'n';
const TEXT: u8 = b't';
const BYTES: u8 = b'x';

/// `{"time":`, `,"values":{` and `}}`, and a time's digits.
const POINT_JSON: u64 = 8 + 11 + 2 + 20;

impl Points {
    /// Room for `points` points of two numbers, about.
    pub fn with_capacity(points: usize) -> Self {
        Points {
            log: Vec::with_capacity(points * 40),
            ..Points::default()
        }
    }

    /// How many points.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held in memory.
    pub fn size(&self) -> usize {
        self.log.len()
    }

    /// About how many bytes of JSON they become: exact for booleans and
    /// names, an upper bound for numbers, text counted unescaped.
    pub fn json_estimate(&self) -> u64 {
        self.json_estimate
    }

    /// Start a point taken at `time` (ns since the epoch); its fields follow.
    pub fn begin(&mut self, time: u64) {
        self.log.push(POINT);
        self.log.extend_from_slice(&time.to_le_bytes());
        self.count += 1;
        self.json_estimate += POINT_JSON;
    }

    /// Add a field to the point begun. `name` is a checked identifier.
    pub fn field(&mut self, name: &str, value: &Value) {
        debug_assert!(self.count > 0, "a field belongs to a point begun");
        // What the value's JSON takes at most (text unescaped).
        let estimate = match value {
            Value::Boolean(b) => {
                self.named(BOOLEAN, name).push(u8::from(*b));
                5
            }
            Value::Integer(n) => {
                self.named(INTEGER, name)
                    .extend_from_slice(&n.to_le_bytes());
                20
            }
            Value::Number(n) => {
                self.named(NUMBER, name).extend_from_slice(&n.to_le_bytes());
                24
            }
            Value::Text(t) => {
                self.named(TEXT, name);
                self.put_bytes(t.as_bytes());
                t.len() as u64 + 2
            }
            Value::Bytes(b) => {
                self.named(BYTES, name);
                self.put_bytes(b);
                (b.len() as u64).div_ceil(3) * 4 + 2
            }
        };
        // `"name":` and a comma.
        self.json_estimate += name.len() as u64 + 4 + estimate;
    }

    /// A field's tag and name; its value follows.
    fn named(&mut self, tag: u8, name: &str) -> &mut Vec<u8> {
        self.log.push(tag);
        self.put_bytes(name.as_bytes());
        &mut self.log
    }

    fn put_bytes(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("names and values are far below 4 GiB");
        self.log.extend_from_slice(&len.to_le_bytes());
        self.log.extend_from_slice(bytes);
    }

    /// Add `other`'s points after these.
    pub fn append(&mut self, other: Points) {
        if self.log.is_empty() {
            *self = other;
            return;
        }
        self.log.extend_from_slice(&other.log);
        self.count += other.count;
        self.json_estimate += other.json_estimate;
    }

    /// The points' JSON and where each ends, on their own.
    #[cfg(test)]
    pub fn to_json(&self) -> (Vec<u8>, Vec<u32>) {
        let (mut json, mut ends) = (Vec::new(), Vec::new());
        self.encode_json(&mut json, &mut ends);
        (json, ends)
    }

    /// Write each point as a JSON object, `{"time":<ns>,"values":{…}}`,
    /// onto `json`, and push where each ends onto `ends` (as the writer's
    /// batches keep them).
    pub fn encode_json(&self, json: &mut Vec<u8>, ends: &mut Vec<u32>) {
        let mut reader = Reader {
            log: &self.log,
            at: 0,
        };
        let mut open = false;
        let mut fields = 0;
        while let Some(tag) = reader.byte() {
            if tag == POINT {
                if open {
                    end_point(json, ends);
                }
                begin_point(json, reader.u64());
                open = true;
                fields = 0;
                continue;
            }
            let name = reader.bytes();
            if fields > 0 {
                json.push(b',');
            }
            fields += 1;
            // Field names are checked identifiers ([A-Za-z0-9_.-]): no escaping.
            json.push(b'"');
            json.extend_from_slice(name);
            json.extend_from_slice(b"\":");
            match tag {
                BOOLEAN => {
                    let on = reader.byte() == Some(1);
                    json.extend_from_slice(if on { b"true" } else { b"false" });
                }
                INTEGER => write_json(json, &i64::from_le_bytes(reader.array())),
                NUMBER => write_json(json, &f64::from_le_bytes(reader.array())),
                TEXT => {
                    let text = std::str::from_utf8(reader.bytes())
                        .expect("the log holds text as a `str` wrote it");
                    write_json(json, text);
                }
                BYTES => {
                    use base64::Engine as _;
                    write_json(json, &crate::value::BASE64.encode(reader.bytes()));
                }
                other => unreachable!("points: unknown tag {other}"),
            }
        }
        if open {
            end_point(json, ends);
        }
    }
}

/// `{"time":<ns>,"values":{`: [`encode_json`](Points::encode_json) adds the
/// fields and `}}`. Straight into the buffer, field by field: this is the
/// hot path of ingest, so no intermediate JSON tree.
fn begin_point(json: &mut Vec<u8>, time: u64) {
    json.extend_from_slice(b"{\"time\":");
    write_json(json, &time);
    json.extend_from_slice(b",\"values\":{");
}

fn end_point(json: &mut Vec<u8>, ends: &mut Vec<u32>) {
    json.extend_from_slice(b"}}");
    ends.push(u32::try_from(json.len()).unwrap_or(u32::MAX));
}

/// A number or string as JSON (a number that is not finite as `null`,
/// as `value::to_json` has it).
fn write_json<T: serde::Serialize + ?Sized>(json: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *json, value).expect("writing JSON to memory cannot fail");
}

/// Reads the log back in the order [`Points`] wrote it.
struct Reader<'a> {
    log: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.log.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let bytes = self.log[self.at..self.at + N].try_into().expect("N bytes");
        self.at += N;
        bytes
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    fn bytes(&mut self) -> &'a [u8] {
        let len = u32::from_le_bytes(self.array()) as usize;
        let bytes = &self.log[self.at..self.at + len];
        self.at += len;
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(of: &[(u64, Vec<(&str, Value)>)]) -> Points {
        let mut points = Points::default();
        for (time, fields) in of {
            points.begin(*time);
            for (name, value) in fields {
                points.field(name, value);
            }
        }
        points
    }

    #[test]
    fn points_are_encoded_as_the_protocol_documents_them() {
        let points = points(&[
            (
                7,
                vec![
                    ("t", Value::Number(21.5)),
                    ("n", Value::Integer(-3)),
                    ("on", Value::Boolean(true)),
                    ("off", Value::Boolean(false)),
                    ("label", Value::Text("a \"b\"\n".into())),
                    ("raw", Value::Bytes(vec![0, 255])),
                    ("whole", Value::Number(2.0)),
                    ("big", Value::Integer(i64::MIN)),
                ],
            ),
            (8, vec![("t", Value::Number(-1.0))]),
        ]);
        assert_eq!(points.len(), 2);
        let (json, ends) = points.to_json();
        assert_eq!(ends.len(), 2);
        assert_eq!(ends[1] as usize, json.len());
        let first = &json[..ends[0] as usize];
        let second = &json[ends[0] as usize..];
        let parsed: serde_json::Value = serde_json::from_slice(first).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"time": 7, "values": {"t": 21.5, "n": -3, "on": true, "off": false, "label": "a \"b\"\n", "raw": "AP8=", "whole": 2.0, "big": i64::MIN}})
        );
        let text = String::from_utf8(first.to_vec()).expect("utf8");
        assert!(
            text.contains("\"whole\":2.0"),
            "numbers stay numbers: {text}"
        );
        assert!(
            text.starts_with(r#"{"time":7,"values":{"t":21.5,"n":-3,"#),
            "{text}"
        );
        let parsed: serde_json::Value = serde_json::from_slice(second).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"time": 8, "values": {"t": -1.0}})
        );
    }

    #[test]
    fn a_number_that_is_not_finite_is_null() {
        let (json, _) = points(&[(1, vec![("v", Value::Number(f64::NAN))])]).to_json();
        assert_eq!(json, br#"{"time":1,"values":{"v":null}}"#);
    }

    #[test]
    fn appended_points_encode_as_one_run_with_ends_past_the_first() {
        let mut first = points(&[(1, vec![("a", Value::Integer(1))])]);
        let second = points(&[
            (2, vec![("a", Value::Integer(2))]),
            (3, vec![("a", Value::Integer(3))]),
        ]);
        let (second_json, _) = second.to_json();
        let (first_json, _) = first.to_json();
        first.append(second);
        assert_eq!(first.len(), 3);
        let (json, ends) = first.to_json();
        assert_eq!(json, [first_json.clone(), second_json].concat());
        assert_eq!(ends[0] as usize, first_json.len());
        assert_eq!(ends.len(), 3);
        assert_eq!(ends[2] as usize, json.len());
        // Appending to nothing takes the points as they are.
        let mut empty = Points::default();
        empty.append(first.clone());
        assert_eq!(empty, first);
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("JSON has finite numbers", |n| n.is_finite())
                .prop_map(Value::Number),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        ]
    }

    proptest::proptest! {
        /// Whatever points are kept, their JSON reads back as the same
        /// times and values, one object per point, ending where `ends` says.
        #[test]
        fn any_points_encode_to_json_that_reads_back_as_them(
            of in proptest::collection::vec(
                (any_time(), proptest::collection::vec(value(), 1..6)),
                0..8,
            )
        ) {
            let mut points = Points::default();
            for (time, values) in &of {
                points.begin(*time);
                for (i, value) in values.iter().enumerate() {
                    points.field(&format!("f{i}"), value);
                }
            }
            let (json, ends) = points.to_json();
            proptest::prop_assert_eq!(ends.len(), of.len());
            let mut start = 0;
            for ((time, values), end) in of.iter().zip(&ends) {
                let read: serde_json::Value = serde_json::from_slice(&json[start..*end as usize])
                    .expect("each point is one JSON object");
                start = *end as usize;
                proptest::prop_assert_eq!(&read["time"], &serde_json::json!(time));
                let fields = read["values"].as_object().expect("values");
                proptest::prop_assert_eq!(fields.len(), values.len());
                for (i, value) in values.iter().enumerate() {
                    let kind = crate::value::kind_of(value);
                    let back = crate::value::from_json(&fields[&format!("f{i}")], kind)
                        .expect("the value reads back as its kind");
                    match (&back, value) {
                        // serde_json reads a float without its `float_roundtrip`
                        // feature, which can land one ULP off what was written.
                        (Value::Number(back), Value::Number(n)) => proptest::prop_assert!(
                            back.to_bits().abs_diff(n.to_bits()) <= 1,
                            "{back} read back for {n}"
                        ),
                        _ => proptest::prop_assert_eq!(&back, value),
                    }
                }
            }
            proptest::prop_assert_eq!(start, json.len());
        }
    }

    fn any_time() -> impl proptest::strategy::Strategy<Value = u64> {
        proptest::prelude::any::<u64>()
    }

    #[test]
    fn the_estimate_is_at_least_the_json_for_numbers_and_close_to_it() {
        let points = points(&[
            (
                1_795_000_000_000_000_000,
                vec![
                    ("v", Value::Number(-1.234_567_890_123_456_7e-300)),
                    ("n", Value::Integer(i64::MIN)),
                    ("on", Value::Boolean(false)),
                ],
            ),
            (u64::MAX, vec![("text", Value::Text("plain".into()))]),
        ]);
        let (json, _) = points.to_json();
        let estimate = points.json_estimate();
        assert!(estimate >= json.len() as u64, "{estimate} < {}", json.len());
        assert!(
            estimate <= json.len() as u64 * 3 / 2,
            "{estimate} is far over {}",
            json.len()
        );
    }
}
