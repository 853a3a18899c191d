//! Building the server: open the data dir, recover from a crash, bind, and run until the
//! shutdown token is cancelled, then drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::config::Config;
use crate::convert::Limits;
use crate::http::auth::Tickets;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::storage::Storage;
use crate::store::{items, users, Store};
use crate::tasks::{ChildLimits, Inspector, Queue, Tasks, WarmPool, Workers};

pub struct App {
    listener: TcpListener,
    state: AppState,
    workers: Arc<Workers>,
    /// The first user's token, created on the first start with an empty data dir.
    pub admin_token: Option<String>,
}

/// Recent events kept for `Last-Event-ID` resumes.
const REPLAY_WINDOW: usize = 10_000;

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN: Duration = Duration::from_secs(3);

impl App {
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<App> {
        crate::memory::map_large_blocks();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
        let bus = Bus::new(config.bus_capacity.max(1), REPLAY_WINDOW);
        let shared = config.database_url.is_some();
        let store = match &config.database_url {
            Some(url) => {
                // The blocking client drives a runtime of its own: not on this one's thread.
                let (url, bus) = (url.clone(), bus.clone());
                let log = crate::store::events::LogLimits {
                    size: config.event_log_size.max(1),
                    min_age: Duration::from_secs(config.event_log_min_age_secs),
                };
                tokio::task::spawn_blocking(move || Store::connect(&url, Arc::new(bus)))
                    .await??
                    .with_event_log(log)
            }
            None => Store::open(
                &config.data_dir.join("rastercast.db"),
                Arc::new(bus.clone()),
            )?,
        };
        let reserve = config.min_free_disk_mb << 20;
        let blobs = Storage::open(&config.storage, &config.data_dir, reserve).await?;

        // Alone on SQLite, every running task was cut off by this process's own stop. With
        // other nodes on the database, they may be running theirs: expired leases tell
        // (`Workers::reap`), and files younger than an hour may be theirs.
        let policy = crate::tasks::Policy {
            max_attempts: config.max_attempts,
            backoff: Duration::from_secs_f64(config.retry_backoff_secs.clamp(0.0, 600.0)),
        };
        let retention = Duration::from_secs(config.task_retention_secs);
        let tasks = Tasks::new(
            store.clone(),
            Queue::default(),
            bus.clone(),
            policy,
            retention,
        );
        let requeued = if shared { 0 } else { tasks.recover().await? };
        let orphan_age = Duration::from_secs(config.orphan_min_age_secs);
        // Scratch is this node's own, unless several nodes share one data dir (on local disk).
        let object_storage = matches!(blobs, Storage::S3(_));
        let scratch_age = if shared && !object_storage {
            orphan_age
        } else {
            Duration::ZERO
        };
        let mut swept = blobs.sweep_scratch(scratch_age)?;
        // Alone on local disk, no one else can be between writing a file and committing it.
        let blob_age = if shared || object_storage {
            orphan_age
        } else {
            Duration::ZERO
        };
        let referenced = store.call(items::referenced_blobs).await?;
        swept += blobs.collect(&referenced, blob_age).await?;
        if requeued > 0 || swept > 0 {
            tracing::info!(requeued, swept, "recovered from an unclean stop");
        }
        let admin_token = store
            .call(|c| {
                if users::user_count(c)? > 0 {
                    return Ok(None);
                }
                // Nodes starting at once on an empty database all get here: only the one whose
                // insert made the user gives it a token.
                match users::create_user(c, "admin")? {
                    Some(admin) => users::create_token(c, &admin).map(Some),
                    None => Ok(None),
                }
            })
            .await?;

        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let exe = match &config.worker_exe {
            Some(exe) => exe.clone(),
            None => crate::tasks::worker_exe()?,
        };
        // Before serving: a feed that starts must find the relay already listening.
        let relay = store.clone();
        let relay_shutdown = shutdown.clone();
        tokio::task::spawn_blocking(move || relay.relay_events(relay_shutdown)).await??;
        let metrics = Arc::new(Metrics::new());
        let workers = Arc::new(Workers {
            tasks: tasks.clone(),
            store: store.clone(),
            blobs: blobs.clone(),
            bus: bus.clone(),
            child: ChildLimits {
                exe,
                memory_bytes: config.worker_memory_mb << 20,
                timeout: config.task_timeout(),
                grace: config.cancel_grace(),
                // Conversions and upload inspections each have `workers` slots.
                warm: WarmPool::new(2 * config.workers()),
            },
            limits: Limits {
                max_pixels: config.max_pixels,
                max_unzipped_bytes: config.max_upload_bytes,
                threads: config.gdal_threads(),
                min_free_bytes: reserve,
                ..Limits::default()
            },
            cache_mb: config.gdal_cache_mb,
            metrics: metrics.clone(),
            node: uuid::Uuid::new_v4().to_string().into(),
            lease: Duration::from_secs_f64(config.lease_secs.max(0.3)),
            reap: shared,
        });
        if !shared {
            crate::webhooks::release_leases(&store).await?;
        }
        let webhooks = crate::webhooks::Webhooks::new(
            store.clone(),
            crate::webhooks::Policy {
                allow_private: config.webhook_allow_private,
            },
            crate::webhooks::Schedule {
                speedup: config.webhook_schedule_speedup,
            },
            workers.node.clone(),
        )?;
        let workers_count = config.workers();
        // Tiles have warm workers of their own, so conversions never wait for a map, nor a
        // map for a conversion's worker.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let renderer = crate::tasks::Renderer::new(
            ChildLimits {
                warm: WarmPool::new(cores),
                timeout: Duration::from_secs(30),
                ..workers.child.clone()
            },
            Limits {
                threads: 1,
                ..workers.limits.clone()
            },
            config.gdal_cache_mb,
            cores,
            config.tile_cache_mb << 20,
        );
        let tickets = Tickets::with_ttl(Duration::from_secs(config.stream_ticket_secs));
        let rate = crate::limits::RequestRate::new(config.max_requests_per_second_per_user);
        let sign_ins = crate::limits::SignInRate::new(config.max_sign_ins_per_minute);
        let streams = crate::limits::Streams::new(crate::limits::StreamLimits {
            per_user: config.max_streams_per_user,
            anonymous_per_ip: config.max_anonymous_streams_per_ip,
            anonymous_total: config.max_anonymous_streams,
        });
        let state = AppState::new(crate::http::SharedState {
            workers: config.workers(),
            config: Arc::new(config),
            store,
            tasks,
            blobs,
            bus,
            tickets,
            link_key: Default::default(),
            metrics,
            inspector: Inspector {
                child: workers.child.clone(),
                limits: workers.limits.clone(),
                cache_mb: workers.cache_mb,
                slots: Arc::new(tokio::sync::Semaphore::new(workers_count)),
                known_crs: Arc::default(),
            },
            renderer,
            streams,
            rate,
            sign_ins,
            revocations: Default::default(),
            sockets: Default::default(),
            writing: Default::default(),
            webhooks,
            shutdown,
        });
        Ok(App {
            listener,
            state,
            workers,
            admin_token,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the shutdown token is cancelled, then stops taking requests, puts
    /// running tasks back in the queue and returns.
    pub async fn run(self) -> anyhow::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let mut pool = if self.state.config.role.converts() {
            self.workers
                .clone()
                .spawn(self.state.workers, shutdown.clone())
        } else {
            tokio::task::JoinSet::new()
        };
        tokio::spawn(crate::memory::trim_until(shutdown.clone()));
        tokio::spawn(self.state.renderer.clone().retire_until(shutdown.clone()));
        tokio::spawn(self.state.tasks.clone().expire_until(shutdown.clone()));
        if self.state.config.role.serves_api() {
            tokio::spawn(crate::http::expire_uploads_until(
                self.state.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(
            self.state
                .webhooks
                .clone()
                .run_until(self.state.bus.clone(), shutdown.clone()),
        );
        if self.state.config.database_url.is_some() || matches!(self.state.blobs, Storage::S3(_)) {
            tokio::spawn(crate::storage::gc::collect_until(
                self.state.blobs.clone(),
                self.state.store.clone(),
                Duration::from_secs(self.state.config.orphan_min_age_secs),
                shutdown.clone(),
            ));
        }
        tokio::spawn(
            self.state
                .revocations
                .clone()
                .run(self.state.store.clone(), shutdown.clone()),
        );
        let router = crate::http::router(self.state.clone());
        let server = crate::http::serve(
            self.listener,
            router,
            self.state.config.header_timeout(),
            shutdown.clone(),
        );
        tokio::select! {
            () = server => {},
            _ = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => {
                tracing::warn!("requests still open after the drain time; closing them");
            }
        }
        shutdown.cancel();
        // Upgraded WebSockets are no longer the HTTP server's to wait for: give each the moment
        // it needs to send its 1001 close frame before the process exits.
        self.state.sockets.close();
        let _ = tokio::time::timeout(DRAIN, self.state.sockets.wait()).await;
        let drained = tokio::time::timeout(DRAIN + self.state.config.cancel_grace(), async {
            while pool.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let node = self.workers.node.clone();
            let requeued = self.state.tasks.requeue_node(node).await;
            tracing::warn!(
                ?requeued,
                "workers did not stop in time; their tasks were queued again"
            );
        }
        Ok(())
    }
}
