//! Prometheus metrics: counters updated where things happen, and gauges that are read from
//! the store and the bus when `/metrics` is scraped.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::bus::Bus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route's pattern (`/api/v1/tasks/{id}/status`), never the raw path.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub conversion_seconds: Family<OutcomeLabels, Histogram>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub bytes_converted: Counter,
    pub bytes_staged: Counter,
    pub sse_open: Gauge,
    pub ws_open: Gauge,
    tasks: Family<StateLabels, Gauge>,
    queue_depth: Gauge,
    events_published: Counter,
    events_coalesced: Counter,
    events_lag_resyncs: Counter,
    event_listeners: Family<ChannelLabels, Gauge>,
    worker_starts: Counter,
    workers_idle: Gauge,
    worker_network_isolated: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rastercast");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let conversion_seconds = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        registry.register(
            "conversion_seconds",
            "Conversion time in the worker, by outcome",
            conversion_seconds.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "upload_bytes",
            "Bytes received in uploads",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "download_bytes",
            "Bytes sent from /content",
            bytes_out.clone(),
        );
        let bytes_converted = Counter::default();
        registry.register(
            "output_bytes",
            "Bytes of published COGs",
            bytes_converted.clone(),
        );
        let bytes_staged = Counter::default();
        registry.register(
            "staged_bytes",
            "Bytes of sources downloaded from object storage for conversions",
            bytes_staged.clone(),
        );
        let sse_open = Gauge::default();
        registry.register(
            "sse_connections",
            "Open Server-Sent Event streams",
            sse_open.clone(),
        );
        let ws_open = Gauge::default();
        registry.register("websocket_connections", "Open WebSockets", ws_open.clone());
        let tasks = Family::<StateLabels, Gauge>::default();
        registry.register("tasks", "Tasks by state", tasks.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Tasks waiting for a worker",
            queue_depth.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Task events published on the bus",
            events_published.clone(),
        );
        let events_coalesced = Counter::default();
        registry.register(
            "events_coalesced",
            "Progress updates folded into a later event",
            events_coalesced.clone(),
        );
        let events_lag_resyncs = Counter::default();
        registry.register(
            "events_lag_resyncs",
            "Times a live client fell behind and was resynced with snapshots",
            events_lag_resyncs.clone(),
        );
        let event_listeners = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "event_listeners",
            "Live streams and sockets listening on the bus, by channel: one task's, one user's, or every event (each of those is woken by every event of the server)",
            event_listeners.clone(),
        );
        let worker_starts = Counter::default();
        registry.register(
            "worker_starts",
            "Conversion worker processes started (a warm worker takes many jobs)",
            worker_starts.clone(),
        );
        let workers_idle = Gauge::default();
        registry.register(
            "workers_idle",
            "Warm worker processes waiting for a job",
            workers_idle.clone(),
        );
        let worker_network_isolated = Gauge::default();
        registry.register(
            "worker_network_isolated",
            "1 when the last worker started runs in a network namespace of its own (no network), 0 when it shares the server's, -1 before the first",
            worker_network_isolated.clone(),
        );
        Metrics {
            registry,
            http_requests,
            conversion_seconds,
            bytes_in,
            bytes_out,
            bytes_converted,
            bytes_staged,
            sse_open,
            ws_open,
            tasks,
            queue_depth,
            events_published,
            events_coalesced,
            events_lag_resyncs,
            event_listeners,
            worker_starts,
            workers_idle,
            worker_network_isolated,
        }
    }

    /// The text exposition, after refreshing what is read at scrape time.
    pub fn render(
        &self,
        tasks_by_state: &[(String, i64)],
        bus: &Bus,
        workers: WorkerCounts,
    ) -> String {
        for state in crate::domain::TaskState::ALL {
            let count = tasks_by_state
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map_or(0, |(_, n)| *n);
            self.tasks
                .get_or_create(&StateLabels {
                    state: state.as_str().into(),
                })
                .set(count);
            if state == crate::domain::TaskState::Pending {
                self.queue_depth.set(count);
            }
        }
        let copy = |from: &AtomicU64, to: &Counter| {
            to.inner()
                .store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        let stats = bus.stats();
        copy(&stats.published, &self.events_published);
        copy(&stats.coalesced, &self.events_coalesced);
        copy(&stats.lag_resyncs, &self.events_lag_resyncs);
        let listeners = bus.listeners();
        for (channel, count) in [
            ("task", listeners.task),
            ("user", listeners.user),
            ("all", listeners.all),
        ] {
            self.event_listeners
                .get_or_create(&ChannelLabels {
                    channel: channel.into(),
                })
                .set(count as i64);
        }
        self.worker_starts
            .inner()
            .store(workers.started, Ordering::Relaxed);
        self.workers_idle.set(workers.idle as i64);
        self.worker_network_isolated
            .set(workers.network_isolated.map_or(-1, i64::from));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

/// Holds a gauge up while a connection is open.
pub struct OpenGuard(Gauge);

impl OpenGuard {
    pub fn new(gauge: &Gauge) -> OpenGuard {
        gauge.inc();
        OpenGuard(gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The child workers' counts, read at scrape time.
pub struct WorkerCounts {
    pub started: u64,
    pub idle: usize,
    /// Whether workers run without network access; `None` before the first has started.
    pub network_isolated: Option<bool>,
}
