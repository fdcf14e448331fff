//! The on-disk form of one value: a JSON record `{"version":..,"updated_ms":..,"value":..}`.
//! The writer encodes records and reads back the previous version; the read path decodes them
//! into [`Entry`]. Only this file knows the record's field names; it does no I/O. Fields added
//! later must be `#[serde(default)]` so that files written today still decode.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Entry, Error, Key};

/// The stored record, borrowing its value when encoding.
#[derive(Serialize)]
struct RecordRef<'a> {
    version: u64,
    updated_ms: u64,
    value: &'a serde_json::Value,
}

/// The stored record, decoding the value into the caller's type.
#[derive(Deserialize)]
struct RecordOwned<T> {
    version: u64,
    updated_ms: u64,
    value: T,
}

/// Just the version of a stored record; the writer needs nothing else of the previous one.
#[derive(Deserialize)]
struct RecordVersion {
    version: u64,
}

/// The bytes stored for `value` at `version`, written at `updated_ms`.
pub(crate) fn encode(
    version: u64,
    updated_ms: u64,
    value: &serde_json::Value,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&RecordRef {
        version,
        updated_ms,
        value,
    })
}

/// The entry stored in `bytes` under `key`.
pub(crate) fn decode<T: DeserializeOwned>(key: &Key, bytes: &[u8]) -> Result<Entry<T>, Error> {
    let record: RecordOwned<T> = serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        key: key.clone(),
        source,
    })?;
    Ok(Entry {
        version: record.version,
        updated_ms: record.updated_ms,
        value: record.value,
    })
}

/// The version of the record in `bytes`.
pub(crate) fn version(bytes: &[u8]) -> Result<u64, serde_json::Error> {
    serde_json::from_slice::<RecordVersion>(bytes).map(|r| r.version)
}
