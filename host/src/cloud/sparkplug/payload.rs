//! Sparkplug B payloads: the protobuf types prost generates from
//! `host/proto/sparkplug_b.proto`, the datatypes a device model's values take,
//! and the conversions between a metric's value and a model value.
//!
//! A value crosses here in both directions: a reported attribute or a point
//! becomes a metric (its datatype fixed by the model), and a command's metric
//! becomes a JSON value for the downlink, which checks it against the model as
//! it checks a `wg/v1` desired change.

use crate::bindings::Value;
use crate::value::ValueKind;

/// The generated types.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/sparkplug_b.rs"));
}

pub use proto::Payload;
pub use proto::payload::Metric;
pub use proto::payload::metric::Value as MetricValue;

/// The datatype numbers of the specification (section 6.4.16) that wasmgate
/// sends or reads.
pub mod datatype {
    pub const INT8: u32 = 1;
    pub const INT16: u32 = 2;
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT8: u32 = 5;
    pub const UINT16: u32 = 6;
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
    pub const DATETIME: u32 = 13;
    pub const TEXT: u32 = 14;
    pub const BYTES: u32 = 17;
}

/// The largest payload the node decodes: a command is a handful of metrics,
/// so anything this large is refused before protobuf reads it.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// The datatype of a model value kind.
pub fn datatype_of(kind: ValueKind) -> u32 {
    match kind {
        ValueKind::Boolean => datatype::BOOLEAN,
        ValueKind::Integer => datatype::INT64,
        ValueKind::Number => datatype::DOUBLE,
        ValueKind::Text => datatype::STRING,
        ValueKind::Bytes => datatype::BYTES,
    }
}

/// A metric's value for a model value.
pub fn metric_value(value: &Value) -> MetricValue {
    match value {
        Value::Boolean(b) => MetricValue::BooleanValue(*b),
        // Sparkplug carries signed integers in the unsigned field, as their
        // two's complement.
        Value::Integer(i) => MetricValue::LongValue(*i as u64),
        Value::Number(n) => MetricValue::DoubleValue(*n),
        Value::Text(s) => MetricValue::StringValue(s.clone()),
        Value::Bytes(b) => MetricValue::BytesValue(b.clone()),
    }
}

/// A metric with a name (births) or an alias (data), a value or an explicit
/// null, and its time in milliseconds.
pub fn metric(
    name: Option<&str>,
    alias: u64,
    datatype: u32,
    value: Option<MetricValue>,
    timestamp_ms: u64,
) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        timestamp: Some(timestamp_ms),
        datatype: Some(datatype),
        is_null: value.is_none().then_some(true),
        value,
        ..Default::default()
    }
}

/// A command metric's value, read as the model's `kind`. The sender's
/// datatype may differ in width or sign (a host writes an Int32 to an integer
/// attribute, a Float to a number one), so the value is read by what it is,
/// and only a value that does not fit the kind is refused.
pub fn read_value(metric: &Metric, kind: ValueKind) -> Result<Value, String> {
    if metric.is_null == Some(true) {
        return Err("the command's value is null".into());
    }
    let datatype = metric.datatype.unwrap_or(0);
    let value = metric.value.as_ref().ok_or(
        "the command's metric has no value wasmgate can read (a dataset, template or extension?)",
    )?;
    let wrong = || format!("expected {kind}, got a metric of datatype {datatype}");
    let signed = matches!(
        datatype,
        datatype::INT8 | datatype::INT16 | datatype::INT32 | datatype::INT64
    );
    let integer = |v: u64, bits: u32| -> i64 {
        // Narrow signed types arrive sign-extended into the unsigned field or
        // as their own width; both read back the same.
        if signed && bits < 64 {
            let shift = 64 - bits;
            ((v << shift) as i64) >> shift
        } else {
            v as i64
        }
    };
    let bits = match datatype {
        datatype::INT8 | datatype::UINT8 => 8,
        datatype::INT16 | datatype::UINT16 => 16,
        datatype::INT32 | datatype::UINT32 => 32,
        _ => 64,
    };
    match (kind, value) {
        (ValueKind::Boolean, MetricValue::BooleanValue(b)) => Ok(Value::Boolean(*b)),
        (ValueKind::Integer, MetricValue::IntValue(v)) => {
            Ok(Value::Integer(integer(u64::from(*v), bits.min(32))))
        }
        (ValueKind::Integer, MetricValue::LongValue(v)) => {
            if !signed && *v > i64::MAX as u64 {
                return Err(format!("{v} does not fit an integer attribute"));
            }
            Ok(Value::Integer(integer(*v, bits)))
        }
        (ValueKind::Number, MetricValue::DoubleValue(n)) => Ok(Value::Number(*n)),
        (ValueKind::Number, MetricValue::FloatValue(n)) => Ok(Value::Number(f64::from(*n))),
        (ValueKind::Number, MetricValue::IntValue(v)) => {
            Ok(Value::Number(integer(u64::from(*v), bits.min(32)) as f64))
        }
        (ValueKind::Number, MetricValue::LongValue(v)) => {
            Ok(Value::Number(integer(*v, bits) as f64))
        }
        (ValueKind::Text, MetricValue::StringValue(s)) => Ok(Value::Text(s.clone())),
        (ValueKind::Bytes, MetricValue::BytesValue(b)) => Ok(Value::Bytes(b.clone())),
        _ => Err(wrong()),
    }
}

/// Decode a payload that came down, refusing one too large to be a command.
pub fn decode(bytes: &[u8]) -> Result<Payload, String> {
    use prost::Message as _;
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "a command of {} bytes is larger than the {MAX_COMMAND_BYTES} bytes taken",
            bytes.len()
        ));
    }
    Payload::decode(bytes).map_err(|e| format!("not a Sparkplug B payload: {e}"))
}

/// A payload's bytes.
pub fn encode(payload: &Payload) -> Vec<u8> {
    use prost::Message as _;
    payload.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(datatype: u32, value: MetricValue) -> Metric {
        Metric {
            name: Some("x".into()),
            datatype: Some(datatype),
            value: Some(value),
            ..Default::default()
        }
    }

    #[test]
    fn a_model_value_round_trips_through_a_metric() {
        for (value, kind) in [
            (Value::Boolean(true), ValueKind::Boolean),
            (Value::Integer(-42), ValueKind::Integer),
            (Value::Integer(i64::MIN), ValueKind::Integer),
            (Value::Number(21.5), ValueKind::Number),
            (Value::Text("on".into()), ValueKind::Text),
            (Value::Bytes(vec![0, 255]), ValueKind::Bytes),
        ] {
            let m = metric(
                Some("x"),
                1,
                datatype_of(kind),
                Some(metric_value(&value)),
                0,
            );
            let decoded = decode(&encode(&Payload {
                metrics: vec![m],
                ..Default::default()
            }))
            .unwrap();
            assert_eq!(read_value(&decoded.metrics[0], kind).unwrap(), value);
        }
    }

    #[test]
    fn narrow_and_unsigned_integers_read_as_their_value() {
        // An Int32 of -5 as a host sends it: the 32-bit two's complement.
        let m = command(datatype::INT32, MetricValue::IntValue((-5i32) as u32));
        assert_eq!(
            read_value(&m, ValueKind::Integer).unwrap(),
            Value::Integer(-5)
        );
        let m = command(datatype::UINT32, MetricValue::IntValue(u32::MAX));
        assert_eq!(
            read_value(&m, ValueKind::Integer).unwrap(),
            Value::Integer(i64::from(u32::MAX))
        );
        let m = command(datatype::INT8, MetricValue::IntValue(0xff));
        assert_eq!(
            read_value(&m, ValueKind::Number).unwrap(),
            Value::Number(-1.0)
        );
        let m = command(datatype::UINT64, MetricValue::LongValue(u64::MAX));
        assert!(read_value(&m, ValueKind::Integer).is_err());
    }

    #[test]
    fn a_value_of_the_wrong_kind_or_a_null_is_refused() {
        let m = command(datatype::STRING, MetricValue::StringValue("hot".into()));
        let e = read_value(&m, ValueKind::Number).unwrap_err();
        assert!(e.contains("expected number"), "{e}");
        let mut m = command(datatype::DOUBLE, MetricValue::DoubleValue(1.0));
        m.is_null = Some(true);
        assert!(
            read_value(&m, ValueKind::Number)
                .unwrap_err()
                .contains("null")
        );
        let mut m = command(datatype::DOUBLE, MetricValue::DoubleValue(1.0));
        m.value = None;
        assert!(read_value(&m, ValueKind::Number).is_err());
    }

    #[test]
    fn garbage_and_oversized_payloads_are_refused() {
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(
            decode(&vec![0u8; MAX_COMMAND_BYTES + 1])
                .unwrap_err()
                .contains("larger")
        );
    }
}
