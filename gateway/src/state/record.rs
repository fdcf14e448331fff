//! The form of one stored value, on disk and on the replication topics: a JSON record
//! `{"version","term","origin","updated_ms","value"}`, or a tombstone
//! `{"version","term","origin","updated_ms","deleted":true}`, and the one order in which
//! records of a key supersede each other. Only this file knows the record's field names; it
//! does no I/O. Fields added later must be `#[serde(default)]` so that files written before
//! still decode (records from before replication have no `term`, `origin` or `deleted`).

use std::cmp::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Entry, Error, Key};

/// One version of one key, as stored and as replicated: a value or a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Per key: one above the store's version floor for the first write (1 in a store that
    /// never forgot a record), +1 for every write after it, deletes included.
    pub version: u64,
    /// The lease term the write was made in, for keys the leader owns; 0 for other keys.
    pub term: u64,
    /// The node that made the write; empty for records written with `Store::put` (the node's
    /// own bookkeeping) and before replication existed.
    pub origin: String,
    /// When the origin committed the write, in milliseconds since the Unix epoch (its clock).
    pub updated_ms: u64,
    /// The value, or `None` for a tombstone (a delete that is still being propagated).
    pub value: Option<serde_json::Value>,
}

/// The shape written: a live record has `value`, a tombstone `"deleted": true` instead.
#[derive(Serialize)]
struct ShapeRef<'a> {
    version: u64,
    term: u64,
    origin: &'a str,
    updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// The shape read, with the value read as `V`: a `serde_json::Value` for a [`Record`],
/// skipped (`IgnoredAny`) for a [`Header`]. A JSON `null` value is a live value of `null`,
/// so `value` is kept apart from "no value" by [`present`].
#[derive(Deserialize)]
#[serde(bound = "V: Deserialize<'de>")]
struct Shape<V> {
    version: u64,
    #[serde(default)]
    term: u64,
    #[serde(default)]
    origin: String,
    updated_ms: u64,
    #[serde(default, deserialize_with = "present")]
    value: Option<V>,
    #[serde(default)]
    deleted: bool,
}

/// A field that is there is `Some`, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>, V: Deserialize<'de>>(
    d: D,
) -> Result<Option<V>, D::Error> {
    V::deserialize(d).map(Some)
}

impl<V: serde::de::DeserializeOwned> Shape<V> {
    /// The shape in `bytes`, refused if it is both deleted and valued, or neither.
    fn read(bytes: &[u8]) -> Result<Shape<V>, RecordError> {
        let shape: Shape<V> = serde_json::from_slice(bytes).map_err(RecordError::Json)?;
        match (shape.deleted, shape.value.is_some()) {
            (true, true) => Err(RecordError::Shape("a deleted record carries a value")),
            (false, false) => Err(RecordError::Shape("a record carries no value")),
            (true, false) | (false, true) => Ok(shape),
        }
    }
}

/// A record without its value: what comparing versions and keeping tombstones need, at a
/// fraction of the memory when the whole store is walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// As in [`Record`].
    pub version: u64,
    /// As in [`Record`].
    pub term: u64,
    /// As in [`Record`].
    pub origin: String,
    /// As in [`Record`].
    pub updated_ms: u64,
    /// Whether the record is a tombstone.
    pub deleted: bool,
}

impl Header {
    /// The header of the record in `bytes`, checked as [`Record::from_bytes`] checks it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Header, RecordError> {
        let shape = Shape::<serde::de::IgnoredAny>::read(bytes)?;
        Ok(Header {
            version: shape.version,
            term: shape.term,
            origin: shape.origin,
            updated_ms: shape.updated_ms,
            deleted: shape.deleted,
        })
    }

    /// [`Record::order`] without the last tie-break (the values): records of one key with
    /// the same term, version and origin are taken to be the same record.
    pub fn order(&self, other: &Header) -> Ordering {
        (self.term, self.version, &self.origin).cmp(&(other.term, other.version, &other.origin))
    }
}

impl Record {
    /// The record's header.
    pub fn header(&self) -> Header {
        Header {
            version: self.version,
            term: self.term,
            origin: self.origin.clone(),
            updated_ms: self.updated_ms,
            deleted: self.is_tombstone(),
        }
    }

    /// Whether this is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The record as JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&ShapeRef {
            version: self.version,
            term: self.term,
            origin: &self.origin,
            updated_ms: self.updated_ms,
            value: self.value.as_ref(),
            deleted: self.is_tombstone(),
        })
    }

    /// A record from JSON bytes. A record must not be both deleted and carry a value, and a
    /// live record must carry one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Record, RecordError> {
        let shape = Shape::<serde_json::Value>::read(bytes)?;
        Ok(Record {
            version: shape.version,
            term: shape.term,
            origin: shape.origin,
            updated_ms: shape.updated_ms,
            value: shape.value,
        })
    }

    /// The order of two records of one key: the higher term wins, then the higher version;
    /// two records with the same term and version (which one writer never makes) are
    /// ordered by origin and then by their bytes, so that every node picks the same one.
    pub fn order(&self, other: &Record) -> Ordering {
        (self.term, self.version)
            .cmp(&(other.term, other.version))
            .then_with(|| self.origin.cmp(&other.origin))
            .then_with(|| self.value_text().cmp(&other.value_text()))
    }

    /// The value's canonical text for the last tie-break; a tombstone sorts first.
    fn value_text(&self) -> Option<String> {
        self.value.as_ref().map(ToString::to_string)
    }

    /// The record as an [`Entry`] with the value decoded as `T`, or `None` for a tombstone.
    pub(crate) fn into_entry<T: DeserializeOwned>(
        self,
        key: &Key,
    ) -> Result<Option<Entry<T>>, Error> {
        let Some(value) = self.value else {
            return Ok(None);
        };
        let value = serde_json::from_value(value).map_err(|source| Error::Decode {
            key: key.clone(),
            source,
        })?;
        Ok(Some(Entry {
            version: self.version,
            term: self.term,
            origin: self.origin,
            updated_ms: self.updated_ms,
            value,
        }))
    }
}

/// Why bytes are not a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not JSON of the record's shape.
    #[error("not a state record: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON of the right fields that contradict each other.
    #[error("not a state record: {0}")]
    Shape(&'static str),
}

/// Whether the stored `bytes` are a tombstone, without decoding the value.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(default)]
        deleted: bool,
    }
    serde_json::from_slice::<Flag>(bytes).is_ok_and(|f| f.deleted)
}

/// The record stored in `bytes` under `key`.
pub(crate) fn decode(key: &Key, bytes: &[u8]) -> Result<Record, Error> {
    Record::from_bytes(bytes).map_err(|source| Error::Corrupt {
        key: key.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(term: u64, version: u64, origin: &str, value: Option<serde_json::Value>) -> Record {
        Record {
            version,
            term,
            origin: origin.into(),
            updated_ms: 7,
            value,
        }
    }

    #[test]
    fn live_and_tombstone_round_trip() {
        let live = rec(2, 3, "node-a", Some(serde_json::json!({"on": true})));
        let bytes = live.to_bytes().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"version":3,"term":2,"origin":"node-a","updated_ms":7,"value":{"on":true}}"#
        );
        assert_eq!(Record::from_bytes(&bytes).unwrap(), live);
        let dead = rec(0, 4, "node-a", None);
        let bytes = dead.to_bytes().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"version":4,"term":0,"origin":"node-a","updated_ms":7,"deleted":true}"#
        );
        assert_eq!(Record::from_bytes(&bytes).unwrap(), dead);
        let null = rec(0, 1, "node-a", Some(serde_json::Value::Null));
        assert_eq!(Record::from_bytes(&null.to_bytes().unwrap()).unwrap(), null);
    }

    #[test]
    fn records_from_before_replication_still_decode() {
        let old = br#"{"version":3,"updated_ms":9,"value":[1,2]}"#;
        let r = Record::from_bytes(old).unwrap();
        assert_eq!((r.version, r.term, r.origin.as_str()), (3, 0, ""));
        assert_eq!(r.value, Some(serde_json::json!([1, 2])));
    }

    #[test]
    fn contradictions_and_garbage_are_refused() {
        for bad in [
            &br#"{"version":1,"updated_ms":1,"deleted":true,"value":1}"#[..],
            br#"{"version":1,"updated_ms":1}"#,
            br#"{"version":"x","updated_ms":1,"value":1}"#,
            b"not json",
        ] {
            assert!(
                Record::from_bytes(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn headers_read_without_the_value_and_check_the_same() {
        let live = rec(
            2,
            3,
            "node-a",
            Some(serde_json::json!({"on": [1, 2, {"x": null}]})),
        );
        let bytes = live.to_bytes().unwrap();
        assert_eq!(Header::from_bytes(&bytes).unwrap(), live.header());
        let dead = rec(0, 4, "node-b", None);
        assert_eq!(
            Header::from_bytes(&dead.to_bytes().unwrap()).unwrap(),
            dead.header()
        );
        assert!(Header::from_bytes(br#"{"version":1,"updated_ms":1}"#).is_err());
        assert_eq!(
            live.header().order(&rec(2, 3, "node-a", None).header()),
            Ordering::Equal
        );
    }

    #[test]
    fn term_then_version_then_origin_then_value() {
        let v = |n: i64| Some(serde_json::json!(n));
        assert_eq!(
            rec(2, 1, "a", v(1)).order(&rec(1, 9, "a", v(1))),
            Ordering::Greater
        );
        assert_eq!(
            rec(1, 2, "a", v(1)).order(&rec(1, 1, "z", v(9))),
            Ordering::Greater
        );
        assert_eq!(
            rec(1, 1, "b", v(1)).order(&rec(1, 1, "a", v(9))),
            Ordering::Greater
        );
        assert_eq!(
            rec(1, 1, "a", v(2)).order(&rec(1, 1, "a", v(1))),
            Ordering::Greater
        );
        assert_eq!(
            rec(1, 1, "a", v(1)).order(&rec(1, 1, "a", None)),
            Ordering::Greater
        );
        assert_eq!(
            rec(1, 1, "a", v(1)).order(&rec(1, 1, "a", v(1))),
            Ordering::Equal
        );
    }
}
