//! Per-user limits that keep one client from taking the server from everyone else: requests
//! per second, tasks queued or running, and open event streams (SSE and WebSocket). Going over
//! one is a 429 with a sentence and a `Retry-After`, never a hang.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use uuid::Uuid;

use crate::error::{AppError, TooSlow};

/// Requests per user: a token bucket refilled at `per_second` that holds four seconds' worth,
/// so a page load or a burst of map tile reads passes and a runaway script does not.
#[derive(Clone, Default)]
pub struct RequestRate {
    /// `None` when the limit is off (0).
    limiter: Option<Arc<DefaultKeyedRateLimiter<Uuid>>>,
    per_second: u32,
}

impl RequestRate {
    pub fn new(per_second: u32) -> RequestRate {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::new(4).expect("4 is not 0"));
            Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        RequestRate {
            limiter,
            per_second,
        }
    }

    /// Counts one request of `user`; a 429 when their bucket is empty.
    pub fn check(&self, user: Uuid) -> Result<(), AppError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&user)
            .map_err(|not_until| AppError::TooManyRequests {
                detail: format!(
                    "Too many requests: the limit is {} per second per user. Slow down, or follow tasks on an event stream instead of polling.",
                    self.per_second
                ),
                retry_after_secs: retry_after(not_until),
            })
    }
}

/// Whole seconds until a refused request would pass, at least one.
fn retry_after(not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
    not_until
        .wait_time_from(DefaultClock::default().now())
        .as_secs()
        .max(1)
}

/// Who holds an open stream: a user, or an address for streams opened by task id alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    User(Uuid),
    Anonymous(IpAddr),
}

/// How many streams each kind of holder may keep open.
#[derive(Clone, Copy)]
pub struct StreamLimits {
    pub per_user: usize,
    pub anonymous_per_ip: usize,
    pub anonymous_total: usize,
}

#[derive(Default)]
struct Open {
    by: HashMap<Holder, usize>,
    anonymous: usize,
}

/// Open SSE streams and WebSockets: per user, and for anonymous ones per address and overall
/// (a task id is a capability anyone may hold, so without these caps a crowd of sockets could
/// take the server's memory).
#[derive(Clone)]
pub struct Streams {
    open: Arc<Mutex<Open>>,
    limits: StreamLimits,
}

/// Held for as long as a stream is open; dropping it frees the place.
pub struct StreamSlot {
    streams: Streams,
    holder: Holder,
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Streams {
        Streams {
            open: Arc::default(),
            limits,
        }
    }

    /// A place for one more stream of `user`, or of an anonymous caller at `ip`; a 429 when
    /// they are at their limit.
    pub fn open(&self, user: Option<Uuid>, ip: IpAddr) -> Result<StreamSlot, AppError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let limits = self.limits;
        let holder = match user {
            Some(user) => Holder::User(user),
            None => Holder::Anonymous(ip),
        };
        let count = open.by.get(&holder).copied().unwrap_or(0);
        let refusal = match holder {
            Holder::User(_) if count >= limits.per_user => Some(format!(
                "You have {count} event streams open; the limit is {} per user. Close one, or follow several tasks on one stream (GET /api/v1/events).",
                limits.per_user
            )),
            Holder::Anonymous(_) if count >= limits.anonymous_per_ip => Some(format!(
                "Your address has {count} event streams open without credentials; the limit is {} per address. Close one, or sign in: streams with a token have a limit of their own.",
                limits.anonymous_per_ip
            )),
            Holder::Anonymous(_) if open.anonymous >= limits.anonymous_total => Some(format!(
                "The server has {} event streams open without credentials, its limit. Try again later, or use a token.",
                open.anonymous
            )),
            _ => None,
        };
        if let Some(detail) = refusal {
            return Err(AppError::TooManyRequests {
                detail,
                retry_after_secs: 5,
            });
        }
        *open.by.entry(holder).or_default() += 1;
        if matches!(holder, Holder::Anonymous(_)) {
            open.anonymous += 1;
        }
        Ok(StreamSlot {
            streams: self.clone(),
            holder,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.by.get_mut(&self.holder) {
            *count -= 1;
            if *count == 0 {
                open.by.remove(&self.holder);
            }
        }
        if matches!(self.holder, Holder::Anonymous(_)) {
            open.anonymous -= 1;
        }
    }
}

/// Sign-ins per address and per token: each one makes a session row, and a token guessed or
/// stolen should not be tried at request speed.
#[derive(Clone)]
pub struct SignInRate {
    /// Per address and per token id; `None` when the limit is off (0).
    limiters: Option<Arc<SignInLimiters>>,
    per_minute: u32,
}

type SignInLimiters = (
    DefaultKeyedRateLimiter<IpAddr>,
    DefaultKeyedRateLimiter<String>,
);

impl SignInRate {
    /// `per_minute` for each address and each token, in bursts of as many; 0 turns it off.
    pub fn new(per_minute: u32) -> SignInRate {
        let limiters = NonZeroU32::new(per_minute).map(|rate| {
            let quota = Quota::per_minute(rate);
            Arc::new((
                DefaultKeyedRateLimiter::keyed(quota),
                DefaultKeyedRateLimiter::keyed(quota),
            ))
        });
        SignInRate {
            limiters,
            per_minute,
        }
    }

    /// Counts a sign-in from `ip` with the token whose id is `token_id`.
    pub fn check(&self, ip: IpAddr, token_id: &str) -> Result<(), AppError> {
        let Some((by_ip, by_token)) = self.limiters.as_deref() else {
            return Ok(());
        };
        let refused = by_ip
            .check_key(&ip)
            .and_then(|()| by_token.check_key(&token_id.to_string()));
        refused.map_err(|not_until| AppError::TooManyRequests {
            detail: format!(
                "Too many sign-ins: the limit is {} per minute from one address and with one token.",
                self.per_minute
            ),
            retry_after_secs: retry_after(not_until),
        })
    }
}

/// `body`, failing with [`TooSlow`] once `grace` has passed if it has averaged under
/// `min_per_sec`; 0 turns the check off.
pub fn min_rate(body: axum::body::Body, min_per_sec: u64, grace: Duration) -> axum::body::Body {
    if min_per_sec == 0 {
        return body;
    }
    let start = Instant::now();
    let mut received = 0u64;
    let checked = body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        received += chunk.len() as u64;
        let elapsed = start.elapsed();
        let rate = received as f64 / elapsed.as_secs_f64();
        if elapsed > grace && rate < min_per_sec as f64 {
            return Err(axum::Error::new(TooSlow {
                rate,
                min: min_per_sec,
                grace_secs: grace.as_secs(),
            }));
        }
        Ok(chunk)
    });
    axum::body::Body::from_stream(checked)
}

/// The 429 for a user whose queued and running tasks are at `limit`.
pub fn too_many_tasks(active: u64, limit: u64) -> AppError {
    AppError::TooManyRequests {
        detail: format!(
            "You have {active} tasks queued or running; the limit is {limit} per user. Start more once some have finished."
        ),
        retry_after_secs: 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_stream_frees_its_place() {
        let streams = Streams::new(StreamLimits {
            per_user: 2,
            anonymous_per_ip: 1,
            anonymous_total: 2,
        });
        let ip = |n| IpAddr::from([127, 0, 0, n]);
        let user = Uuid::new_v4();
        let first = streams.open(Some(user), ip(1)).unwrap();
        let _second = streams.open(Some(user), ip(1)).unwrap();
        assert!(streams.open(Some(user), ip(2)).is_err());
        assert!(
            streams.open(Some(Uuid::new_v4()), ip(1)).is_ok(),
            "limits are per user"
        );
        drop(first);
        assert!(streams.open(Some(user), ip(1)).is_ok());

        let anonymous = streams.open(None, ip(1)).unwrap();
        assert!(streams.open(None, ip(1)).is_err(), "per address");
        let _other = streams.open(None, ip(2)).unwrap();
        assert!(streams.open(None, ip(3)).is_err(), "overall");
        drop(anonymous);
        assert!(streams.open(None, ip(3)).is_ok());
    }

    #[test]
    fn sign_ins_are_limited_per_address_and_per_token() {
        let rate = SignInRate::new(2);
        let ip = |n| IpAddr::from([127, 0, 0, n]);
        assert!(rate.check(ip(1), "a").is_ok());
        assert!(rate.check(ip(1), "b").is_ok());
        assert!(rate.check(ip(1), "c").is_err(), "per address");
        assert!(rate.check(ip(2), "a").is_ok());
        assert!(rate.check(ip(3), "a").is_err(), "per token");
        assert!(SignInRate::new(0).check(ip(1), "a").is_ok(), "off");
    }
}
