//! The request headers of the tus 1.0.0 resumable-upload protocol
//! (<https://tus.io/protocols/resumable-upload>), read into values or refused with the
//! sentence a client gets: `Upload-Length` / `Upload-Defer-Length`, `Upload-Metadata`,
//! `Upload-Offset` and `Upload-Checksum`. No I/O; the endpoint that uses them is built on top.

/// The protocol version spoken, in `Tus-Resumable` and `Tus-Version`.
pub const VERSION: &str = "1.0.0";

/// Checksum algorithms accepted in `Upload-Checksum`, as `Tus-Checksum-Algorithm` lists them.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";

/// Why a header was refused: the sentence for `{"detail"}`. Every one is a 400, except an
/// unsupported checksum algorithm, which the protocol also answers with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

fn refuse<T>(sentence: impl Into<String>) -> Result<T, HeaderError> {
    Err(HeaderError(sentence.into()))
}

/// A non-negative decimal integer, as the protocol writes offsets and lengths.
fn number(name: &str, value: &str) -> Result<u64, HeaderError> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return refuse(format!(
            "{name} must be a whole number of bytes, not {value:?}."
        ));
    }
    value
        .parse()
        .or_else(|_| refuse(format!("{name} is too large: {value}.")))
}

/// An upload's length at creation: `Some(n)` from `Upload-Length`, `None` when deferred with
/// `Upload-Defer-Length: 1`. Exactly one of the two must be sent.
pub fn creation_length(
    length: Option<&str>,
    defer: Option<&str>,
) -> Result<Option<u64>, HeaderError> {
    match (length, defer) {
        (Some(_), Some(_)) => refuse("Send either Upload-Length or Upload-Defer-Length, not both."),
        (Some(length), None) => number("Upload-Length", length).map(Some),
        (None, Some(defer)) if defer.trim() == "1" => Ok(None),
        (None, Some(defer)) => refuse(format!(
            "Upload-Defer-Length can only be 1, not {:?}.",
            defer.trim()
        )),
        (None, None) => refuse(
            "A new upload needs Upload-Length (its size in bytes), or Upload-Defer-Length: 1.",
        ),
    }
}

/// `Upload-Offset` of a `PATCH`.
pub fn offset(value: Option<&str>) -> Result<u64, HeaderError> {
    match value {
        Some(value) => number("Upload-Offset", value),
        None => refuse("A PATCH needs Upload-Offset: where its bytes start."),
    }
}

/// `Upload-Length` sent later, on a `PATCH` of an upload whose length was deferred.
pub fn late_length(value: &str) -> Result<u64, HeaderError> {
    number("Upload-Length", value)
}

/// One `Upload-Metadata` pair: a key, and its value when one was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataPair {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// `Upload-Metadata`: comma-separated pairs of a key and its Base64-encoded value (the value
/// may be left out). Keys are ASCII without spaces or commas, and unique. An empty header is
/// no metadata (some clients always send one).
pub fn metadata(header: &str) -> Result<Vec<MetadataPair>, HeaderError> {
    use base64::Engine;
    let mut pairs: Vec<MetadataPair> = Vec::new();
    for element in header.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = element.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default();
        let encoded = parts.next();
        if parts.next().is_some() {
            return refuse(format!(
                "Upload-Metadata pairs are a key and one Base64 value: {element:?} has more."
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return refuse(format!(
                "Upload-Metadata keys are printable ASCII: {key:?} is not."
            ));
        }
        if pairs.iter().any(|p| p.key == key) {
            return refuse(format!("Upload-Metadata names {key:?} twice."));
        }
        let value = match encoded {
            None => None,
            Some(encoded) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .or_else(|_| {
                        refuse(format!(
                            "The Upload-Metadata value of {key:?} is not Base64."
                        ))
                    })?,
            ),
        };
        pairs.push(MetadataPair {
            key: key.to_string(),
            value,
        });
    }
    Ok(pairs)
}

/// A checksum algorithm of `Upload-Checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
}

impl Algorithm {
    /// The digest's length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }
}

/// `Upload-Checksum: <algorithm> <Base64 digest>`, for the bytes of one request.
pub fn checksum(header: &str) -> Result<(Algorithm, Vec<u8>), HeaderError> {
    use base64::Engine;
    let Some((name, encoded)) = header.trim().split_once(' ') else {
        return refuse("Upload-Checksum is an algorithm and a Base64 digest, e.g. \"sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=\".");
    };
    let algorithm = match name.to_ascii_lowercase().as_str() {
        "sha1" => Algorithm::Sha1,
        "sha256" => Algorithm::Sha256,
        other => {
            return refuse(format!(
            "The checksum algorithm {other:?} is not supported; use one of {CHECKSUM_ALGORITHMS}."
        ))
        }
    };
    let digest = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .or_else(|_| refuse("The Upload-Checksum digest is not Base64."))?;
    if digest.len() != algorithm.digest_len() {
        return refuse(format!(
            "A {name} digest is {} bytes; this one is {}.",
            algorithm.digest_len(),
            digest.len()
        ));
    }
    Ok((algorithm, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_given_or_deferred_never_both() {
        assert_eq!(creation_length(Some("100"), None), Ok(Some(100)));
        assert_eq!(creation_length(Some("0"), None), Ok(Some(0)));
        assert_eq!(creation_length(None, Some("1")), Ok(None));
        assert!(creation_length(Some("1"), Some("1")).is_err());
        assert!(creation_length(None, Some("0")).is_err());
        assert!(creation_length(None, None).is_err());
        for bad in ["-1", "1.5", "", " ", "0x10", "99999999999999999999999"] {
            assert!(creation_length(Some(bad), None).is_err(), "{bad:?}");
        }
        assert_eq!(offset(Some(" 42 ")), Ok(42));
        assert!(offset(None).is_err());
    }

    #[test]
    fn metadata_as_the_specification_writes_it() {
        // The specification's own example.
        let pairs =
            metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential").unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].key, "filename");
        assert_eq!(
            pairs[0].value.as_deref(),
            Some(&b"world_domination_plan.pdf"[..])
        );
        assert_eq!(pairs[1].key, "is_confidential");
        assert_eq!(pairs[1].value, None);
        assert_eq!(metadata("").unwrap(), vec![]);
        assert_eq!(metadata(" , ").unwrap(), vec![]);
        assert!(metadata("a Zm9v,a YmFy").is_err(), "a key twice");
        assert!(metadata("a not_base64!").is_err());
        assert!(metadata("a Zm9v extra").is_err());
        assert!(metadata("ключ Zm9v").is_err(), "keys are ASCII");
    }

    #[test]
    fn checksums_name_a_supported_algorithm_and_a_digest_of_its_length() {
        // "hello world", as the specification's example.
        let (algorithm, digest) = checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!(algorithm, Algorithm::Sha1);
        assert_eq!(digest.len(), 20);
        let sha256 = "sha256 uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=";
        assert_eq!(checksum(sha256).unwrap().0, Algorithm::Sha256);
        assert!(checksum("md5 XrY7u+Ae7tCTyyK7j1rNww==").is_err());
        assert!(checksum("sha1").is_err());
        assert!(checksum("sha1 !!!").is_err());
        assert!(checksum("sha1 uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=").is_err());
    }
}
