//! Signing webhook deliveries as the Standard Webhooks specification says
//! (<https://www.standardwebhooks.com>, version 1.0.0): the signed content is
//! `{webhook-id}.{webhook-timestamp}.{body}`, its HMAC-SHA256 goes in `webhook-signature` as
//! `v1,<Base64>`, and while a secret is being rotated the header carries one signature per
//! secret, separated by spaces. Secrets are shown as `whsec_` and the Base64 of 24 to 64 random
//! bytes. No I/O; the delivery engine that uses this is built on top.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret as users see it.
pub const SECRET_PREFIX: &str = "whsec_";

/// Key lengths the specification allows, in bytes.
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing secret: the key bytes behind `whsec_…`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a secret was refused: the sentence for `{"detail"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

impl Secret {
    /// A secret from its key bytes (made by the caller from a secure random source).
    pub fn from_key(key: Vec<u8>) -> Result<Secret, SecretError> {
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError(format!(
                "A webhook secret holds {} to {} bytes; this one has {}.",
                KEY_BYTES.start(),
                KEY_BYTES.end(),
                key.len()
            )));
        }
        Ok(Secret(key))
    }

    /// `whsec_<Base64>` as users give it (the prefix may be left out, as the reference
    /// libraries allow).
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| {
                SecretError(format!(
                    "A webhook secret is {SECRET_PREFIX} followed by Base64 (standard alphabet, padded)."
                ))
            })?;
        Secret::from_key(key)
    }

    /// The secret as users see it: `whsec_<Base64>`.
    pub fn reveal(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<Base64>` signature of one delivery attempt. `body` is the exact bytes sent.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let digest = self.mac(id, timestamp, body).finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    /// Whether any `v1` signature in a `webhook-signature` header is this secret's for the
    /// delivery (compared in constant time). Timestamps are the receiver's to check.
    pub fn verifies(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|signature| {
            let Some(encoded) = signature.strip_prefix("v1,") else {
                return false;
            };
            let Ok(digest) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
                return false;
            };
            self.mac(id, timestamp, body).verify_slice(&digest).is_ok()
        })
    }
}

/// The `webhook-signature` header for a delivery: one signature per secret in use (the new
/// one and, while a rotation overlaps, the old one), separated by spaces.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// When a failed delivery is tried again: the delay before each attempt after the first
/// (immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h), as Svix schedules them.
pub const RETRY_DELAYS: [std::time::Duration; 8] = {
    use std::time::Duration;
    [
        Duration::ZERO,
        Duration::from_secs(5),
        Duration::from_secs(5 * 60),
        Duration::from_secs(30 * 60),
        Duration::from_secs(2 * 3600),
        Duration::from_secs(5 * 3600),
        Duration::from_secs(10 * 3600),
        Duration::from_secs(10 * 3600),
    ]
};

/// The delay before attempt `n` (0 is the first, sent at once), spread by `jitter` (from -1 to
/// 1, drawn by the caller) over ±10 % so that deliveries that failed together do not all come
/// back together; `None` once the schedule is used up.
pub fn retry_delay(n: usize, jitter: f64) -> Option<std::time::Duration> {
    let base = *RETRY_DELAYS.get(n)?;
    Some(base.mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0)))
}

/// Whether a delivery may go to `ip`: a public unicast address, never this machine, a private
/// or link-local network (where cloud metadata services answer), or a special-purpose range.
/// IPv4 inside IPv6 (mapped, or NAT64) is judged as the IPv4 it carries.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 is AWS metadata)
                || (segments[0] & 0xffc0) == 0xfe80 // link-local
                || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
                || segments[..5] == [0, 0, 0, 0, 0]) // IPv4-compatible and other reserved
        }
    }
}

/// What a delivery announces. Task events carry the task's status as every channel shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    TaskStarted,
    TaskProgress,
    TaskSucceeded,
    TaskFailed,
    TaskRevoked,
    /// Sent by `POST /webhooks/{id}/test`, to whatever the endpoint subscribes to.
    WebhookTest,
}

impl EventType {
    /// The event types an endpoint may subscribe to.
    pub const TASK_EVENTS: [EventType; 5] = [
        EventType::TaskStarted,
        EventType::TaskProgress,
        EventType::TaskSucceeded,
        EventType::TaskFailed,
        EventType::TaskRevoked,
    ];

    /// A task's end, as a one-off `callback_url` receives it.
    pub const FINAL: [EventType; 3] = [
        EventType::TaskSucceeded,
        EventType::TaskFailed,
        EventType::TaskRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TaskStarted => "task.started",
            EventType::TaskProgress => "task.progress",
            EventType::TaskSucceeded => "task.succeeded",
            EventType::TaskFailed => "task.failed",
            EventType::TaskRevoked => "task.revoked",
            EventType::WebhookTest => "webhook.test",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        Self::TASK_EVENTS
            .into_iter()
            .chain([EventType::WebhookTest])
            .find(|e| e.as_str() == text)
    }

    /// The event a task's change announces, if any: a task queued (again) or asked to stop
    /// announces nothing to webhooks; its start, progress and end do.
    pub fn of_change(state: crate::domain::TaskState, progress: bool) -> Option<EventType> {
        use crate::domain::TaskState;
        Some(match state {
            TaskState::Progress if progress => EventType::TaskProgress,
            TaskState::Success => EventType::TaskSucceeded,
            TaskState::Failure => EventType::TaskFailed,
            TaskState::Revoked => EventType::TaskRevoked,
            _ => return None,
        })
    }
}

/// A task's own callback: `url` receives `events`, signed with its owner's callback secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub url: String,
    pub events: Vec<EventType>,
}

/// The body of a delivery, as the specification shapes it. Built once per event: every
/// attempt sends the same bytes under a fresh timestamp and signature.
pub fn body(event: EventType, timestamp: &str, data: serde_json::Value) -> String {
    serde_json::json!({"type": event.as_str(), "timestamp": timestamp, "data": data}).to_string()
}

/// How long a receiver has to answer before an attempt counts as failed.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// An endpoint whose deliveries have failed for this long, with no success between, is
/// disabled.
pub const DISABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(5 * 86400);

/// What one attempt's answer means for its delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// A 2xx: delivered.
    Delivered,
    /// 410 Gone: the receiver asks never to be called again; its endpoint is disabled.
    Gone,
    /// Anything else (or no answer): try again later, not before `not_before` if the receiver
    /// said so (`Retry-After`).
    Failed {
        not_before: Option<std::time::Duration>,
    },
}

/// The longest `Retry-After` honoured: a receiver cannot park a delivery past the schedule's
/// own longest wait.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10 * 3600);

/// Judges an attempt from its status code (`None`: no answer in time, or no connection) and
/// its `Retry-After` header (seconds; an HTTP date is read as "later", by the schedule).
pub fn judge(status: Option<u16>, retry_after: Option<&str>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        _ => Verdict::Failed {
            not_before: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| std::time::Duration::from_secs(s).min(MAX_RETRY_AFTER)),
        },
    }
}

/// When the attempt after `tries` failed ones goes out: the schedule's delay (jittered), or
/// the receiver's `Retry-After` if that is later; `None` once the schedule is used up.
pub fn next_delay(
    tries: usize,
    not_before: Option<std::time::Duration>,
    jitter: f64,
) -> Option<std::time::Duration> {
    let scheduled = retry_delay(tries, jitter)?;
    Some(not_before.map_or(scheduled, |wait| wait.max(scheduled)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's reference libraries' own test vectors (Python, JavaScript and Go
    /// share the first; the Rust library has the second).
    const VECTORS: [(&str, &str, i64, &str, &str); 2] = [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];

    #[test]
    fn signatures_match_the_reference_libraries_vectors() {
        for (secret, id, timestamp, body, expected) in VECTORS {
            let secret = Secret::parse(secret).unwrap();
            assert_eq!(secret.sign(id, timestamp, body.as_bytes()), expected);
            assert!(secret.verifies(id, timestamp, body.as_bytes(), expected));
        }
    }

    #[test]
    fn a_changed_byte_anywhere_fails_verification() {
        let (secret, id, timestamp, body, good) = VECTORS[0];
        let secret = Secret::parse(secret).unwrap();
        // The libraries' own negative case: the last character of the signature changed.
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert!(!secret.verifies(id, timestamp, body.as_bytes(), bad));
        assert!(!secret.verifies("msg_other", timestamp, body.as_bytes(), good));
        assert!(!secret.verifies(id, timestamp + 1, body.as_bytes(), good));
        assert!(!secret.verifies(id, timestamp, br#"{"test": 2432232315}"#, good));
        assert!(!secret.verifies(id, timestamp, body.as_bytes(), "v2,abc"));
        assert!(!secret.verifies(id, timestamp, body.as_bytes(), ""));
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_either_verifies() {
        let old = Secret::parse(VECTORS[0].0).unwrap();
        let new = Secret::from_key(vec![7; 32]).unwrap();
        let header = signature_header(&[new.clone(), old.clone()], "msg_1", 1700000000, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert!(new.verifies("msg_1", 1700000000, b"{}", &header));
        assert!(old.verifies("msg_1", 1700000000, b"{}", &header));
        let other = Secret::from_key(vec![9; 32]).unwrap();
        assert!(!other.verifies("msg_1", 1700000000, b"{}", &header));
    }

    #[test]
    fn secrets_read_and_show_as_whsec_base64_of_24_to_64_bytes() {
        let secret = Secret::parse(VECTORS[0].0).unwrap();
        assert_eq!(secret.reveal(), VECTORS[0].0);
        // The prefix may be left out.
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            secret
        );
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::from_key(vec![1; 23]).is_err());
        assert!(Secret::from_key(vec![1; 65]).is_err());
        assert!(Secret::from_key(vec![1; 64]).is_ok());
        assert_eq!(format!("{secret:?}"), "Secret(…)", "never printed");
    }

    #[test]
    fn retries_follow_the_schedule_with_bounded_jitter_then_stop() {
        use std::time::Duration;
        assert_eq!(retry_delay(0, 1.0), Some(Duration::ZERO));
        assert_eq!(retry_delay(1, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(7, 0.0), Some(Duration::from_secs(36_000)));
        assert_eq!(retry_delay(8, 0.0), None);
        let low = retry_delay(3, -1.0).unwrap();
        let high = retry_delay(3, 5.0).unwrap();
        assert_eq!(low, Duration::from_secs(1620));
        assert_eq!(high, Duration::from_secs(1980), "jitter is capped at 10 %");
        let total: Duration = RETRY_DELAYS.iter().sum();
        assert_eq!(total, Duration::from_secs(99_305), "27 h 35 min 5 s in all");
    }

    #[test]
    fn only_public_unicast_addresses_may_receive_deliveries() {
        let public = [
            "93.184.215.14",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        let refused = [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ];
        for ip in public {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        for ip in refused {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not");
        }
        // Just outside the private ranges.
        assert!(is_public("172.32.0.1".parse().unwrap()));
        assert!(is_public("100.128.0.1".parse().unwrap()));
    }

    #[test]
    fn event_types_round_trip_and_changes_map_to_them() {
        use crate::domain::TaskState;
        for e in EventType::TASK_EVENTS
            .into_iter()
            .chain([EventType::WebhookTest])
        {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
        }
        assert_eq!(EventType::parse("task.queued"), None);
        assert_eq!(
            EventType::of_change(TaskState::Progress, true),
            Some(EventType::TaskProgress)
        );
        // A cancel asked for, or a task queued again, is no webhook event.
        assert_eq!(EventType::of_change(TaskState::Progress, false), None);
        assert_eq!(EventType::of_change(TaskState::Pending, false), None);
        assert_eq!(
            EventType::of_change(TaskState::Revoked, false),
            Some(EventType::TaskRevoked)
        );
    }

    #[test]
    fn answers_are_judged_as_the_issue_says() {
        use std::time::Duration;
        assert_eq!(judge(Some(204), None), Verdict::Delivered);
        assert_eq!(judge(Some(410), Some("5")), Verdict::Gone);
        assert_eq!(judge(None, None), Verdict::Failed { not_before: None });
        assert_eq!(
            judge(Some(503), Some(" 120 ")),
            Verdict::Failed {
                not_before: Some(Duration::from_secs(120))
            }
        );
        assert_eq!(
            judge(Some(429), Some("999999999")),
            Verdict::Failed {
                not_before: Some(MAX_RETRY_AFTER)
            }
        );
        assert_eq!(
            judge(Some(500), Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            Verdict::Failed { not_before: None }
        );
    }

    #[test]
    fn retry_after_only_ever_delays_the_schedule() {
        use std::time::Duration;
        // After the first failure the schedule says 5 s: a Retry-After of 60 s wins, one of
        // 1 s does not shorten it.
        assert_eq!(
            next_delay(1, Some(Duration::from_secs(60)), 0.0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            next_delay(1, Some(Duration::from_secs(1)), 0.0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(next_delay(RETRY_DELAYS.len(), None, 0.0), None);
    }
}
