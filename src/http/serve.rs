//! Accepting connections: hyper with a deadline for request headers, so a client that sends
//! its headers a byte at a time (slowloris), or nothing at all, holds a connection for
//! seconds, not forever. (`axum::serve` sets no timer, hence no such deadline.)
//!
//! The protocol is told from the first bytes, peeked and left for hyper to read: HTTP/2 with
//! prior knowledge opens with its preface, anything else is HTTP/1. hyper-util's `auto`
//! builder reads those bytes itself and hands them back to hyper's HTTP/1 reader as a first
//! read of 24 bytes, which made hyper grow its read buffer to 16 KiB for every connection,
//! most of an idle event stream's memory.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Serves `router` until `shutdown`, then waits for open requests and streams to end (the
/// caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, usually: wait for some to close.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // Each connection shares the finished router (a reference count), not a rebuilt one.
        let service = router.clone().map_request(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                super::resumable::method_override(&mut request);
                request.map(axum::body::Body::new)
            },
        );
        let service = TowerToHyperService::new(service);
        let (h1, h2, shutdown) = (h1.clone(), h2.clone(), shutdown.clone());
        connections.spawn(async move {
            // hyper's header timer starts with the request, so a connection that sends
            // nothing at all is timed here, from the accept.
            let protocol = match tokio::time::timeout(header_timeout, sniff(&stream)).await {
                Ok(Ok(protocol)) => protocol,
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(%peer, "no request within the header timeout; closing");
                    return;
                }
            };
            let io = TokioIo::new(stream);
            let result = match protocol {
                Protocol::Http1 => {
                    let connection = h1.serve_connection(io, service).with_upgrades();
                    until_drained(connection, &shutdown, |c| c.graceful_shutdown()).await
                }
                Protocol::Http2 => {
                    // Boxed: most connections are HTTP/1, and every connection's task is as
                    // large as its largest state.
                    let connection = h2.serve_connection(io, service);
                    Box::pin(until_drained(connection, &shutdown, |c| {
                        c.graceful_shutdown()
                    }))
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

#[derive(Debug, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

/// What HTTP/2 with prior knowledge sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol the client speaks, from its first bytes, which stay unread.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut first = [0u8; PREFACE.len()];
    loop {
        let peeked = stream.peek(&mut first).await?;
        if peeked == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if first[..peeked] != PREFACE[..peeked] {
            return Ok(Protocol::Http1);
        }
        if peeked == PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Part of the preface so far. A peek finds the same bytes until more arrive, and
        // readiness stays set while any are unread: wait a little before looking again.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drives `connection` to its end; once `shutdown` is cancelled, asks it to finish what is
/// in flight and take nothing more.
async fn until_drained<C, E>(
    connection: C,
    shutdown: &CancellationToken,
    drain: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        () = shutdown.cancelled() => drain(connection.as_mut()),
    }
    connection.await
}
