//! What the serial codecs share: how a malformed frame is reported. Each codec is a
//! `tokio_util::codec::Decoder` + `Encoder` pair whose decoded item is
//! `Result<Frame, Malformed>`: bad input is reported in-band and skipped, so the stream goes
//! on (a `Decoder` error would end it), and only I/O errors are errors.

/// Input a codec could not read, skipped; the node logs it and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A JSON line that is not a message of the protocol.
    #[error("not a message: {reason}")]
    BadJson {
        /// What the JSON reader said.
        reason: String,
    },
    /// A line or frame longer than the protocol allows; this many bytes were skipped.
    #[error("frame too long ({skipped} bytes skipped)")]
    TooLong {
        /// How many bytes were dropped.
        skipped: usize,
    },
    /// Bytes that start no frame (a Firmata data byte outside a message, say).
    #[error("{skipped} stray bytes skipped")]
    Stray {
        /// How many bytes were dropped.
        skipped: usize,
    },
    /// A frame cut short by the start of another, or with a field out of range.
    #[error("broken frame: {reason}")]
    Broken {
        /// What was wrong.
        reason: &'static str,
    },
}

impl Malformed {
    /// The metric label of this kind of bad input.
    pub fn label(&self) -> &'static str {
        match self {
            Malformed::BadJson { .. } => "bad_json",
            Malformed::TooLong { .. } => "too_long",
            Malformed::Stray { .. } => "stray",
            Malformed::Broken { .. } => "broken",
        }
    }
}
