//! The `upload` command: sends a local file to a rastercast server over tus 1.0.0
//! (`/api/v1/uploads`), in chunks each checked with `Upload-Checksum: sha256`, and resumes an
//! interrupted upload. Within a run, a transient failure (a broken connection, 423, 408, 429,
//! 5xx, a checksum mismatch, 409) is retried with backoff after a `HEAD` tells where the upload
//! stands; across runs, the upload's URL is remembered in a [`state::StateFile`] until it
//! completes, so the same command run again continues from the server's offset.

pub mod state;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use indicatif::ProgressBar;
use reqwest013::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest013::{Client, Method, RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use sha2::Digest;
use uuid::Uuid;

use crate::domain::tus;
use state::{Entry, Key, StateFile};

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
const UPLOAD_ITEM_ID: HeaderName = HeaderName::from_static("upload-item-id");
const UPLOAD_TASK_ID: HeaderName = HeaderName::from_static("upload-task-id");
const CHUNK_TYPE: &str = "application/offset+octet-stream";

/// Tries in a row that move nothing forward before a run gives up.
const MAX_ATTEMPTS: u32 = 6;
/// The wait before the first retry; each further one waits twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A server's `Retry-After` is honoured up to this; a longer one ends the run.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longest silence from the server within one answer. The PATCH that completes a large
/// upload answers only once the server has joined the chunks.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a chunk handed to the connection at a time (the progress bar moves by these).
const SLICE: usize = 64 * 1024;

/// What to upload, where, and how.
pub struct Options {
    pub file: PathBuf,
    /// The server, e.g. `https://maps.example.org` (an `/api/v1` suffix is accepted too).
    pub url: String,
    pub token: String,
    pub parent_id: Option<Uuid>,
    /// The tree item's name (default: the file's name).
    pub name: Option<String>,
    /// Conversion options as a JSON object, queued when the upload completes.
    pub convert: Option<String>,
    pub chunk_bytes: u64,
    /// Where to remember unfinished uploads (default: [`StateFile::default_path`]).
    pub state_file: Option<PathBuf>,
}

/// The outcome, printed as JSON.
#[derive(Debug, Serialize)]
pub struct Uploaded {
    pub tree_item_id: Uuid,
    /// The conversion queued on completion, when one was asked for.
    pub task_id: Option<Uuid>,
    /// Why the conversion asked for was not queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion_error: Option<String>,
    pub upload_url: String,
    pub length: u64,
    /// The server's offset when this run started: 0 for a new upload, more when it resumed.
    pub resumed_from: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Wrong arguments or an unreadable file: nothing was sent.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

/// Why one request did not move the upload on.
#[derive(Debug)]
enum Failure {
    /// Another try may go through: the connection broke, the server is busy, restarting or
    /// shutting down, the bytes arrived damaged, or the offset was not the server's.
    Transient {
        why: String,
        retry_after: Option<Duration>,
    },
    /// The upload (or the folder asked for) is unknown to the server: expired, deleted, or
    /// another user's. The status as text, and the server's detail.
    Gone(String, String),
    /// A refusal another try would not change.
    Refused(String),
}

impl Failure {
    fn transient(why: impl Into<String>) -> Failure {
        Failure::Transient {
            why: why.into(),
            retry_after: None,
        }
    }
}

/// Where an upload stands, from the headers of a creation, `HEAD` or `PATCH`.
#[derive(Debug, Clone, Copy)]
struct Standing {
    offset: u64,
    length: Option<u64>,
    item: Option<Uuid>,
    task: Option<Uuid>,
}

/// The file being sent.
struct Source {
    file: std::fs::File,
    path: PathBuf,
    key: Key,
}

impl Source {
    fn open(path: &Path, server: &str) -> Result<Source, UploadError> {
        let unreadable =
            |e: std::io::Error| UploadError::Usage(format!("cannot read {}: {e}", path.display()));
        let absolute = std::fs::canonicalize(path).map_err(unreadable)?;
        let file = std::fs::File::open(&absolute).map_err(unreadable)?;
        let metadata = file.metadata().map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(UploadError::Usage(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let key = Key {
            server: server.to_string(),
            path: absolute,
            size: metadata.len(),
            mtime_ns: mtime_ns(&metadata),
        };
        Ok(Source {
            file,
            path: path.to_path_buf(),
            key,
        })
    }

    fn len(&self) -> u64 {
        self.key.size
    }

    /// Whether the file is no longer the one the upload began with (another size or
    /// modification time).
    fn changed(&self) -> bool {
        self.file.metadata().map_or(true, |now| {
            now.len() != self.key.size || mtime_ns(&now) != self.key.mtime_ns
        })
    }

    /// `len` bytes from `offset`.
    fn read(&self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        let mut bytes = vec![0; len as usize];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes.into())
    }
}

fn mtime_ns(metadata: &std::fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The server's base URL, ending in `/` (without an `/api/v1` the user may have added).
fn server_base(url: &str) -> Result<Url, UploadError> {
    let mut base = Url::parse(url.trim())
        .map_err(|e| UploadError::Usage(format!("--url {url:?} is not a URL: {e}")))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(UploadError::Usage(format!(
            "--url {url:?} is not an http or https URL"
        )));
    }
    let path = base.path().trim_end_matches('/');
    let path = path.strip_suffix("/api/v1").unwrap_or(path).to_string();
    base.set_path(&format!("{path}/"));
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

/// `Upload-Metadata`: the item's name, and its folder and conversion when given.
fn metadata(name: &str, parent_id: Option<Uuid>, convert: Option<&str>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut pairs = vec![format!("filename {}", b64(name))];
    if let Some(parent) = parent_id {
        pairs.push(format!("parent_id {}", b64(&parent.to_string())));
    }
    if let Some(convert) = convert {
        pairs.push(format!("convert {}", b64(convert)));
    }
    pairs.join(",")
}

/// `--convert`, checked to be a JSON object and written compactly (so that the same options
/// spelt differently still resume the same upload).
fn conversion_json(convert: &str) -> Result<String, UploadError> {
    match serde_json::from_str::<serde_json::Value>(convert) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value.to_string()),
        Ok(_) => Err(UploadError::Usage(
            "--convert takes a JSON object, e.g. '{\"compression\":\"zstd\"}'".into(),
        )),
        Err(e) => Err(UploadError::Usage(format!("--convert is not JSON: {e}"))),
    }
}

/// Uploads `options.file`, resuming the upload a previous run left unfinished. Progress goes
/// to `bar` (its length is set here), notices to stderr.
pub async fn upload(options: Options, bar: &ProgressBar) -> Result<Uploaded, UploadError> {
    if options.chunk_bytes == 0 {
        return Err(UploadError::Usage("--chunk-size must be at least 1".into()));
    }
    let base = server_base(&options.url)?;
    let endpoint = base.join("api/v1/uploads").expect("a relative path joins");
    let source = Source::open(&options.file, base.as_str())?;
    let name = match options.name {
        Some(name) => name,
        None => options
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "upload".into()),
    };
    let convert = options
        .convert
        .as_deref()
        .map(conversion_json)
        .transpose()?;
    let metadata = metadata(&name, options.parent_id, convert.as_deref());
    let state = StateFile::new(match options.state_file {
        Some(path) => path,
        None => StateFile::default_path().ok_or_else(|| {
            UploadError::Usage("neither XDG_STATE_HOME nor HOME is set: pass --state-file".into())
        })?,
    });
    let token = HeaderValue::from_str(&format!("Bearer {}", options.token.trim()))
        .map_err(|_| UploadError::Usage("--token is not a valid header value".into()))?;
    let client = Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("rastercast/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            UploadError::Failed(format!("cannot make an HTTP client: {}", root_cause(&e)))
        })?;
    let tus = Tus { client, token, bar };
    let length = source.len();
    bar.set_length(length);
    bar.set_message("Connecting");

    let (url, standing) = match resumable(&tus, &state, &source.key, &metadata).await? {
        Some(found) => found,
        None => {
            let (url, standing) = tus
                .retrying("create the upload", || {
                    tus.create(&endpoint, length, &metadata)
                })
                .await
                .map_err(|f| refused("create the upload", f))?;
            let remembered = state.remember(Entry {
                key: source.key.clone(),
                upload_url: url.to_string(),
                metadata: metadata.clone(),
                saved_at: crate::time::now(),
            });
            if let Err(e) = remembered {
                // An upload no run could resume: better none.
                tus.delete(&url).await;
                return Err(UploadError::Failed(format!("{e:#}")));
            }
            (url, standing)
        }
    };
    let resumed_from = standing.offset;
    bar.set_position(standing.offset);
    bar.reset_eta();
    bar.set_message(if resumed_from > 0 {
        "Resuming"
    } else {
        "Uploading"
    });

    let mut standing = send(&tus, &source, &state, &url, standing, options.chunk_bytes).await?;

    // Every byte is there: the answer that completed it names the item; when that answer
    // was lost (or an earlier run completed it), HEAD does.
    if standing.item.is_none() {
        standing = tus
            .retrying("learn the new item", || tus.head(&url))
            .await
            .map_err(|f| refused("learn the new item", f))?;
    }
    let Some(tree_item_id) = standing.item else {
        return Err(UploadError::Failed(format!(
            "the server has all {length} bytes but named no tree item for them ({url})"
        )));
    };
    let _ = state.forget(&source.key);
    bar.set_position(length);
    bar.set_message("Done");
    let conversion_error = match (&convert, standing.task) {
        (Some(_), None) => tus.conversion_error(&url).await,
        _ => None,
    };
    Ok(Uploaded {
        tree_item_id,
        task_id: standing.task,
        conversion_error,
        upload_url: url.to_string(),
        length,
        resumed_from,
    })
}

/// Sends the file from where the upload stands, chunk by chunk, until the server has every
/// byte; where it stands then.
async fn send(
    tus: &Tus<'_>,
    source: &Source,
    state: &StateFile,
    url: &Url,
    mut standing: Standing,
    chunk_bytes: u64,
) -> Result<Standing, UploadError> {
    let mut failures = 0;
    while standing.offset < source.len() {
        let offset = standing.offset;
        let chunk = match source.read(offset, chunk_bytes.min(source.len() - offset)) {
            Ok(chunk) if !source.changed() => chunk,
            read => {
                // No later run can resume this upload either: it is for the file as it was.
                tus.delete(url).await;
                let _ = state.forget(&source.key);
                return Err(UploadError::Failed(match read {
                    Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                        format!("cannot read {}: {e}", source.path.display())
                    }
                    _ => format!(
                        "{} changed while it was being uploaded; run the command again to upload it as it is now",
                        source.path.display()
                    ),
                }));
            }
        };
        let failure = match tus.patch(url, offset, chunk).await {
            Ok(landed) if landed.offset > offset => {
                failures = 0;
                standing = landed;
                continue;
            }
            Ok(landed) => Failure::transient(format!(
                "the server took none of the bytes (it is at byte {})",
                landed.offset
            )),
            Err(failure) => failure,
        };
        tus.bar.set_position(offset);
        let (why, retry_after) = match failure {
            Failure::Transient { why, retry_after } => (why, retry_after),
            Failure::Gone(_, detail) => return Err(gone(state, &source.key, &detail)),
            refusal @ Failure::Refused(_) => return Err(refused("upload", refusal)),
        };
        failures += 1;
        tus.wait(failures, &why, retry_after)
            .await
            .map_err(|why| gave_up(&why, offset, source.len()))?;
        // Where does the upload stand? (The chunk may have landed before the answer was lost.)
        match tus.head(url).await {
            Ok(now) => {
                if now.offset > offset {
                    failures = 0;
                }
                tus.bar.set_position(now.offset);
                standing = now;
            }
            Err(Failure::Transient { .. }) => {}
            Err(Failure::Gone(_, detail)) => return Err(gone(state, &source.key, &detail)),
            Err(refusal) => return Err(refused("upload", refusal)),
        }
    }
    Ok(standing)
}

/// The upload is gone from the server (expired or deleted): no run can resume it.
fn gone(state: &StateFile, key: &Key, detail: &str) -> UploadError {
    let _ = state.forget(key);
    UploadError::Failed(format!(
        "the upload is gone from the server (expired or deleted): {detail}; run the command again to start over"
    ))
}

/// The upload a previous run left for this file, and where it stands, if the server still
/// has it; an entry for other metadata (another name, folder or conversion) is deleted.
async fn resumable(
    tus: &Tus<'_>,
    state: &StateFile,
    key: &Key,
    metadata: &str,
) -> Result<Option<(Url, Standing)>, UploadError> {
    let entry = state
        .find(key)
        .map_err(|e| UploadError::Failed(format!("{e:#}")))?;
    let Some(entry) = entry else {
        return Ok(None);
    };
    let Ok(url) = Url::parse(&entry.upload_url) else {
        let _ = state.forget(key);
        return Ok(None);
    };
    if entry.metadata != metadata {
        tus.notice("the name, folder or conversion changed: starting a new upload");
        tus.delete(&url).await;
        let _ = state.forget(key);
        return Ok(None);
    }
    match tus
        .retrying("find the unfinished upload", || tus.head(&url))
        .await
    {
        Ok(standing) if standing.length == Some(key.size) => Ok(Some((url, standing))),
        Ok(_) => {
            tus.notice("the unfinished upload has another length: starting a new upload");
            tus.delete(&url).await;
            let _ = state.forget(key);
            Ok(None)
        }
        Err(Failure::Gone(..)) => {
            tus.notice("the unfinished upload expired or was deleted: starting a new upload");
            let _ = state.forget(key);
            Ok(None)
        }
        Err(failure) => Err(refused("find the unfinished upload", failure)),
    }
}

/// The sentence for a failure that ends the run.
fn refused(what: &str, failure: Failure) -> UploadError {
    UploadError::Failed(match failure {
        Failure::Refused(why) => why,
        Failure::Gone(status, detail) => {
            format!("the server refused to {what} ({status}): {detail}")
        }
        Failure::Transient { why, .. } => {
            format!("could not {what} after {MAX_ATTEMPTS} attempts: {why}")
        }
    })
}

fn gave_up(why: &str, offset: u64, length: u64) -> UploadError {
    UploadError::Failed(format!(
        "gave up after {MAX_ATTEMPTS} attempts in a row without progress ({why}); {offset} of {length} bytes are on the server: run the same command again to resume"
    ))
}

/// The wait before retry number `failures` (1 for the first): 0.5 s, 1 s, 2 s, 4 s, 8 s…
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The protocol's requests, as one user.
struct Tus<'a> {
    client: Client,
    token: HeaderValue,
    bar: &'a ProgressBar,
}

impl Tus<'_> {
    fn request(&self, method: Method, url: &Url) -> RequestBuilder {
        self.client
            .request(method, url.clone())
            .header(TUS_RESUMABLE, tus::VERSION)
            .header(reqwest013::header::AUTHORIZATION, self.token.clone())
    }

    /// A line on stderr that leaves the progress bar whole.
    fn notice(&self, sentence: &str) {
        self.bar.suspend(|| eprintln!("rastercast: {sentence}"));
    }

    /// Says why the last try failed and waits before the next one; `Err` once there were
    /// [`MAX_ATTEMPTS`] failures in a row, or the server asks for a longer wait than we take.
    async fn wait(
        &self,
        failures: u32,
        why: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), String> {
        if failures >= MAX_ATTEMPTS {
            return Err(why.to_string());
        }
        if retry_after.is_some_and(|d| d > MAX_RETRY_AFTER) {
            return Err(why.to_string());
        }
        let wait = backoff(failures).max(retry_after.unwrap_or_default());
        self.notice(&format!(
            "{why}; retrying in {:.1} s (attempt {} of {MAX_ATTEMPTS})",
            wait.as_secs_f64(),
            failures + 1
        ));
        self.bar.set_message("Retrying");
        tokio::time::sleep(wait).await;
        self.bar.set_message("Uploading");
        Ok(())
    }

    /// `op` until it succeeds, fails for good, or failed [`MAX_ATTEMPTS`] times in a row.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Err(Failure::Transient { why, retry_after }) => {
                    failures += 1;
                    let why = format!("could not {what}: {why}");
                    if let Err(why) = self.wait(failures, &why, retry_after).await {
                        return Err(Failure::Refused(format!(
                            "gave up after {failures} attempts ({why})"
                        )));
                    }
                }
                done => return done,
            }
        }
    }

    /// `POST`: a new upload of `length` bytes; its URL.
    async fn create(
        &self,
        endpoint: &Url,
        length: u64,
        metadata: &str,
    ) -> Result<(Url, Standing), Failure> {
        let response = self
            .request(Method::POST, endpoint)
            .header(UPLOAD_LENGTH, length)
            .header(UPLOAD_METADATA, metadata)
            .send()
            .await
            .map_err(|e| sending(&e))?;
        let response = answered(response, "create the upload").await?;
        let location = response
            .headers()
            .get(reqwest013::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Failure::Refused(format!(
                    "{endpoint} answered {} without a Location: is it a rastercast server?",
                    response.status()
                ))
            })?;
        let url = endpoint.join(location).map_err(|e| {
            Failure::Refused(format!(
                "the server's Location {location:?} is not a URL: {e}"
            ))
        })?;
        let mut standing = standing(response.headers())?;
        standing.length = Some(length);
        Ok((url, standing))
    }

    /// `HEAD`: where the upload stands.
    async fn head(&self, url: &Url) -> Result<Standing, Failure> {
        let response = self
            .request(Method::HEAD, url)
            .send()
            .await
            .map_err(|e| sending(&e))?;
        let response = answered(response, "resume the upload").await?;
        standing(response.headers())
    }

    /// `PATCH`: `chunk` at `offset`, with its sha256; where the upload stands after it.
    async fn patch(&self, url: &Url, offset: u64, chunk: Bytes) -> Result<Standing, Failure> {
        let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&chunk));
        let len = chunk.len();
        let bar = self.bar.clone();
        let slices = futures_util::stream::iter((0..len).step_by(SLICE).map(move |start| {
            let slice = chunk.slice(start..(start + SLICE).min(len));
            bar.inc(slice.len() as u64);
            Ok::<_, std::convert::Infallible>(slice)
        }));
        let response = self
            .request(Method::PATCH, url)
            .header(reqwest013::header::CONTENT_TYPE, CHUNK_TYPE)
            .header(reqwest013::header::CONTENT_LENGTH, len)
            .header(UPLOAD_OFFSET, offset)
            .header(UPLOAD_CHECKSUM, format!("sha256 {digest}"))
            .body(reqwest013::Body::wrap_stream(slices))
            .send()
            .await
            .map_err(|e| sending(&e))?;
        let response = answered(response, "upload").await?;
        let landed = standing(response.headers())?;
        if landed.offset < offset + len as u64 && landed.item.is_none() {
            // Fewer bytes than sent were kept (a server that stores what it got of a cut
            // chunk): the bar goes back to what counts.
            self.bar.set_position(landed.offset);
        }
        Ok(landed)
    }

    /// `DELETE`, best effort: an upload this command will not resume stops counting against
    /// the user's unfinished ones.
    async fn delete(&self, url: &Url) {
        let _ = self.request(Method::DELETE, url).send().await;
    }

    /// Why the conversion asked for was not queued, from `GET` of the upload (best effort).
    async fn conversion_error(&self, url: &Url) -> Option<String> {
        let response = self
            .client
            .get(url.clone())
            .header(reqwest013::header::AUTHORIZATION, self.token.clone())
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        let error = body["conversion_error"].as_str()?.to_string();
        self.notice(&format!("the conversion was not queued: {error}"));
        Some(error)
    }
}

/// A request that got no answer: always worth another try (the connection broke, the server
/// restarts, the network is down for a moment).
fn sending(e: &reqwest013::Error) -> Failure {
    let host = e
        .url()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| "the server".into());
    let why = if e.is_timeout() {
        format!("{host} did not answer in time")
    } else if e.is_connect() {
        format!("cannot connect to {host} ({})", root_cause(e))
    } else {
        format!("the connection to {host} broke ({})", root_cause(e))
    };
    Failure::transient(why)
}

/// A 2xx answer as it is; any other as the failure it means.
async fn answered(response: Response, what: &str) -> Result<Response, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest013::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let detail = detail(response).await;
    let why = format!("{} ({})", detail, status_text(status));
    Err(match status.as_u16() {
        // Busy (another request still writes to the upload), too slow, too many requests,
        // damaged on the way, or the offset moved: HEAD and try again.
        408 | 409 | 423 | 429 | 460 => Failure::Transient { why, retry_after },
        404 | 410 => Failure::Gone(status_text(status), detail),
        // The disk is full or the request is not implemented: another try changes nothing.
        501 | 505 | 507 => Failure::Refused(format!(
            "the server could not {what} ({}): {detail}",
            status_text(status)
        )),
        500..=599 => Failure::Transient { why, retry_after },
        _ => Failure::Refused(format!(
            "the server refused to {what} ({}): {detail}",
            status_text(status)
        )),
    })
}

/// `413 Payload Too Large`.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None if status.as_u16() == 460 => "460 Checksum Mismatch".into(),
        None => status.as_u16().to_string(),
    }
}

/// The `detail` of an error body, without its final full stop (the sentence goes on); the
/// body's first line, or the status, when it has none.
async fn detail(response: Response) -> String {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let text = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body)
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect()
        });
    let text = text.trim().trim_end_matches('.').to_string();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string()
    } else {
        text
    }
}

/// The offset, length, item and task in an answer's headers.
fn standing(headers: &HeaderMap) -> Result<Standing, Failure> {
    let number = |name: &HeaderName| -> Option<u64> {
        headers.get(name)?.to_str().ok()?.trim().parse().ok()
    };
    let uuid = |name: &HeaderName| -> Option<Uuid> {
        headers.get(name)?.to_str().ok()?.trim().parse().ok()
    };
    let offset = number(&UPLOAD_OFFSET).ok_or_else(|| {
        Failure::Refused(
            "the server answered without Upload-Offset: is it a rastercast server?".into(),
        )
    })?;
    Ok(Standing {
        offset,
        length: number(&UPLOAD_LENGTH),
        item: uuid(&UPLOAD_ITEM_ID),
        task: uuid(&UPLOAD_TASK_ID),
    })
}

/// What an error comes down to: its innermost cause (`Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_eight() {
        let waits: Vec<f64> = (1..=7).map(|n| backoff(n).as_secs_f64()).collect();
        assert_eq!(waits, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
    }

    #[test]
    fn the_server_url_is_its_base_with_or_without_the_api_prefix() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/api/v1",
            "http://127.0.0.1:8080/api/v1/",
        ] {
            assert_eq!(server_base(url).unwrap().as_str(), "http://127.0.0.1:8080/");
        }
        assert_eq!(
            server_base("https://maps.example.org/raster")
                .unwrap()
                .as_str(),
            "https://maps.example.org/raster/"
        );
        assert!(server_base("ftp://example.org").is_err());
        assert!(server_base("not a url").is_err());
    }

    #[test]
    fn metadata_is_what_the_server_reads() {
        let parent = Uuid::new_v4();
        let header = metadata("a b.tif", Some(parent), Some("{}"));
        let pairs = tus::metadata(&header).unwrap();
        let values: Vec<(String, String)> = pairs
            .into_iter()
            .map(|p| (p.key, String::from_utf8(p.value.unwrap()).unwrap()))
            .collect();
        assert_eq!(
            values,
            [
                ("filename".to_string(), "a b.tif".to_string()),
                ("parent_id".to_string(), parent.to_string()),
                ("convert".to_string(), "{}".to_string()),
            ]
        );
    }

    #[test]
    fn conversion_options_must_be_a_json_object() {
        assert_eq!(
            conversion_json("{ \"compression\" : \"zstd\" }").unwrap(),
            r#"{"compression":"zstd"}"#
        );
        assert!(conversion_json("zstd").is_err());
        assert!(conversion_json("[1]").is_err());
    }
}
