//! Accepting connections: hyper with a deadline for request headers, so a client that sends
//! its headers a byte at a time (slowloris), or nothing at all, holds a connection for
//! seconds, not forever. (`axum::serve` sets no timer, hence no such deadline.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `router` until `shutdown`, then waits for open requests and streams to end (the
/// caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
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
        // hyper's header timer starts at the first byte (the protocol sniffing before it has
        // none), so a connection that sends nothing is timed here, from the accept.
        let started = Arc::new(AtomicBool::new(false));
        let seen = started.clone();
        // Each connection shares the finished router (a reference count), not a rebuilt one.
        let service = router.clone().map_request(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                seen.store(true, Ordering::Relaxed);
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                super::resumable::method_override(&mut request);
                request.map(axum::body::Body::new)
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = tokio::time::sleep(header_timeout) => {
                    if !started.load(Ordering::Relaxed) {
                        tracing::debug!(%peer, "no request within the header timeout; closing");
                        return;
                    }
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
