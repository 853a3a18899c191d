//! Timestamps as the API writes them: RFC 3339, UTC, millisecond precision.

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
