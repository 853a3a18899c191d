//! Sending one signed attempt, to public addresses only. The resolver hands the HTTP client
//! only the addresses it checked, so the connection goes to an address that passed (no window
//! for DNS rebinding); a URL naming an address is checked before anything is sent. No proxy,
//! no redirects, 15 s for the whole answer, and no more than 1 KiB of it is read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use reqwest013 as reqwest;

use crate::domain::webhook::{self, Secret, Verdict};
use crate::store::webhooks::{Attempt, Due};

/// How much of an answer the delivery log keeps.
const KEEP_BYTES: usize = 1024;

/// The longest URL an endpoint may have.
pub const MAX_URL_BYTES: usize = 2048;

/// Which addresses deliveries may go to.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `--webhook-allow-private`: loopback and private networks too (tests, a private
    /// deployment).
    pub allow_private: bool,
}

impl Policy {
    fn allows(self, ip: IpAddr) -> bool {
        self.allow_private || webhook::is_public(ip)
    }

    /// The refusal for a URL whose host is `ip`, if it is refused.
    fn refuse(self, host: &str, ip: IpAddr) -> Option<String> {
        (!self.allows(ip)).then(|| {
            let what = "a loopback, private, link-local or reserved address";
            let named = host.trim_matches(['[', ']']);
            let is = if named == ip.to_string() {
                format!("{ip} is {what}")
            } else {
                format!("{host} is {ip}, {what}")
            };
            format!(
                "{is}; webhooks go to public addresses only (a server started with \
                 --webhook-allow-private takes private ones too)."
            )
        })
    }
}

/// Checks a URL as endpoints and callbacks are given: http or https, a host, no more than
/// 2 KiB, and every address it resolves to allowed. Returns the sentence for `{"detail"}`.
pub async fn check_url(policy: Policy, text: &str) -> Result<reqwest::Url, String> {
    if text.len() > MAX_URL_BYTES {
        return Err(format!("A webhook URL has at most {MAX_URL_BYTES} bytes."));
    }
    let url =
        reqwest::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}."))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "A webhook URL starts with https:// (or http://), not {}://.",
            url.scheme()
        ));
    }
    let Some(host) = url.host() else {
        return Err("A webhook URL names a host.".into());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("{name} does not resolve: {e}."))?
            .map(|a| a.ip())
            .collect(),
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    if let Some(refused) = addrs.iter().find_map(|ip| policy.refuse(&host, *ip)) {
        return Err(refused);
    }
    Ok(url)
}

/// Resolves names to the addresses the policy allows, and fails for a name with none.
struct Resolver(Policy);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                let why = match found.first() {
                    Some(a) => policy.refuse(&host, a.ip()).unwrap_or_default(),
                    None => format!("{host} has no address."),
                };
                return Err(why.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Sends attempts.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    policy: Policy,
}

impl Client {
    pub fn new(policy: Policy) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(policy)))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(webhook::TIMEOUT)
            .connect_timeout(webhook::TIMEOUT)
            .user_agent(concat!("rastercast-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client { http, policy })
    }

    /// Sends `due` once, signed with a fresh timestamp, and judges the answer.
    pub async fn send(&self, due: &Due) -> (Attempt, Verdict) {
        let at = crate::time::now();
        let started = Instant::now();
        let result = tokio::time::timeout(webhook::TIMEOUT, self.exchange(due)).await;
        let latency_ms = started.elapsed().as_millis() as i64;
        let (status, retry_after, response, error) = match result {
            Ok(Ok(answer)) => (Some(answer.0), answer.1, answer.2, None),
            Ok(Err(why)) => (None, None, String::new(), Some(why)),
            Err(_) => (
                None,
                None,
                String::new(),
                Some(format!(
                    "No answer within {} s.",
                    webhook::TIMEOUT.as_secs()
                )),
            ),
        };
        let verdict = webhook::judge(status, retry_after.as_deref());
        let attempt = Attempt {
            at,
            status_code: status,
            latency_ms,
            response,
            error,
        };
        (attempt, verdict)
    }

    /// Status, `Retry-After` and the first KiB of the answer; or why there was none.
    async fn exchange(&self, due: &Due) -> Result<(u16, Option<String>, String), String> {
        let url = reqwest::Url::parse(&due.url).map_err(|e| format!("Not a URL: {e}."))?;
        // The resolver is not asked for a URL that names an address.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(refused) = literal.and_then(|ip| self.policy.refuse(url.as_str(), ip)) {
            return Err(refused);
        }
        let secrets: Vec<Secret> = due
            .secrets
            .iter()
            .filter_map(|s| Secret::parse(s).ok())
            .collect();
        if secrets.is_empty() {
            return Err("No signing secret: nothing is sent unsigned.".into());
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature =
            webhook::signature_header(&secrets, &due.id, timestamp, due.body.as_bytes());
        let mut answer = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &due.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(due.body.clone())
            .send()
            .await
            .map_err(describe)?;
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut kept = Vec::new();
        while kept.len() < KEEP_BYTES {
            match answer.chunk().await {
                Ok(Some(bytes)) => kept.extend_from_slice(&bytes),
                // The status is what counts; a body cut short is kept as far as it came.
                Ok(None) | Err(_) => break,
            }
        }
        kept.truncate(KEEP_BYTES);
        Ok((
            status,
            retry_after,
            String::from_utf8_lossy(&kept).into_owned(),
        ))
    }
}

/// A failed request in one sentence, with the resolver's refusal when that was the cause.
fn describe(e: reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    let mut deepest = e.to_string();
    while let Some(s) = source {
        deepest = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        format!("No answer within {} s.", webhook::TIMEOUT.as_secs())
    } else if e.is_connect() {
        format!("Could not connect: {deepest}")
    } else {
        format!("The request failed: {deepest}")
    }
}
