//! Timestamps as the API writes them: RFC 3339, UTC, millisecond precision.

pub fn now() -> String {
    format(chrono::Utc::now())
}

pub fn format(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
