//! Per-user limits that keep one client from taking the server from everyone else: requests
//! per second, tasks queued or running, and open event streams (SSE and WebSocket). Going over
//! one is a 429 with a sentence and a `Retry-After`, never a hang.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use uuid::Uuid;

use crate::error::AppError;

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
        limiter.check_key(&user).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AppError::TooManyRequests {
                detail: format!(
                    "Too many requests: the limit is {} per second per user. Slow down, or follow tasks on an event stream instead of polling.",
                    self.per_second
                ),
                retry_after_secs: wait.as_secs().max(1),
            }
        })
    }
}

/// Open SSE streams and WebSockets per user.
#[derive(Clone, Default)]
pub struct Streams {
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// Held for as long as a stream is open; dropping it frees the place.
pub struct StreamSlot {
    streams: Streams,
    user: Uuid,
}

impl Streams {
    /// A place for one more stream of `user`, or a 429 when they already have `limit` open.
    pub fn open(&self, user: Uuid, limit: usize) -> Result<StreamSlot, AppError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(user).or_default();
        if *count >= limit {
            return Err(AppError::TooManyRequests {
                detail: format!(
                    "You have {count} event streams open; the limit is {limit} per user. Close one, or follow several tasks on one stream (GET /api/v1/events)."
                ),
                retry_after_secs: 5,
            });
        }
        *count += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            user,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
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
        let streams = Streams::default();
        let user = Uuid::new_v4();
        let first = streams.open(user, 2).unwrap();
        let _second = streams.open(user, 2).unwrap();
        assert!(streams.open(user, 2).is_err());
        assert!(
            streams.open(Uuid::new_v4(), 2).is_ok(),
            "limits are per user"
        );
        drop(first);
        assert!(streams.open(user, 2).is_ok());
    }
}
