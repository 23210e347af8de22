//! Delivers session lifecycle events (`events`): one task per destination
//! drains its bounded queue in batches of JSON lines, a webhook `POST` or a
//! Redis Stream `XADD`. A failed delivery is tried again with a growing pause
//! (100 ms doubling to 30 s) while new events wait in the queue; a full queue
//! drops new events and counts them, so a request never waits on delivery.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::EventsConfig;
use crate::session::{Event, EventCounters, EventSink, RedisStore, Store};

/// The longest pause between two tries of one batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a webhook has to answer one batch.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// What is still queued at shutdown gets this long to go out.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// A stream keeps about this many entries (`XADD … MAXLEN ~`).
const STREAM_LENGTH: usize = 100_000;

/// A destination's name in `/metrics`.
const WEBHOOK: &str = "webhook";
const REDIS_STREAM: &str = "redis_stream";

/// The queues the stores emit into, and what the delivery tasks will drain.
pub(crate) struct Queues {
    pub(crate) sink: EventSink,
    receivers: Vec<(&'static str, mpsc::Receiver<Arc<Event>>)>,
}

/// Makes a queue for each configured destination.
pub(crate) fn queues(config: &EventsConfig) -> Queues {
    let mut names = Vec::new();
    if config.webhook.is_some() {
        names.push(WEBHOOK);
    }
    if config.redis_stream.is_some() {
        names.push(REDIS_STREAM);
    }
    let (sink, receivers) = EventSink::new(config.queue, &names, EventCounters::default());
    Queues {
        sink,
        receivers: names.into_iter().zip(receivers).collect(),
    }
}

/// The delivery tasks; [`Delivery::shutdown`] flushes what is queued.
pub(crate) struct Delivery {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Delivery {
    /// Stops every destination at once; each gets its final flush together,
    /// so shutdown waits at most about `FINAL_FLUSH` however many there are.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + FINAL_FLUSH + Duration::from_secs(1);
        for task in self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
    }
}

/// Where one destination's batches go.
enum Destination {
    Webhook(Webhook),
    Stream { store: RedisStore, key: String },
}

impl Destination {
    async fn deliver(&self, batch: &[Arc<Event>]) -> Result<(), String> {
        match self {
            Destination::Webhook(w) => {
                let mut body = Vec::with_capacity(batch.len() * 160);
                for event in batch {
                    event.write_line(&mut body);
                }
                w.post(body).await
            }
            Destination::Stream { store, key } => {
                let lines: Vec<Vec<u8>> = batch
                    .iter()
                    .map(|e| {
                        let mut line = Vec::new();
                        e.write_line(&mut line);
                        line.pop();
                        line
                    })
                    .collect();
                store
                    .append_events(key, &lines, STREAM_LENGTH)
                    .await
                    .map_err(|e| crate::chain::Chain(&e).to_string())
            }
        }
    }
}

/// Starts one task per destination.
pub(crate) fn spawn(config: &EventsConfig, queues: Queues, store: &Store) -> Delivery {
    let (stop, stopped) = watch::channel(false);
    let counters = queues.sink.counters().clone();
    let mut tasks = Vec::new();
    for (name, rx) in queues.receivers {
        let destination = match name {
            WEBHOOK => match config.webhook.clone().map(Webhook::new) {
                Some(w) => Destination::Webhook(w),
                None => continue,
            },
            _ => match (store, &config.redis_stream) {
                (Store::Redis(r), Some(key)) => Destination::Stream {
                    store: r.clone(),
                    key: key.clone(),
                },
                _ => continue,
            },
        };
        let (delivered, dropped, failed) = counters.of(name);
        let run = Run {
            name,
            destination,
            batch: config.batch,
            flush_interval: config.flush_interval,
            delivered,
            dropped,
            failed,
        };
        tasks.push(tokio::spawn(run.drain(rx, stopped.clone())));
    }
    Delivery { stop, tasks }
}

struct Run {
    name: &'static str,
    destination: Destination,
    batch: usize,
    flush_interval: Duration,
    delivered: Counter,
    dropped: Counter,
    failed: Counter,
}

impl Run {
    async fn drain(self, mut rx: mpsc::Receiver<Arc<Event>>, mut stop: watch::Receiver<bool>) {
        let mut batch: Vec<Arc<Event>> = Vec::with_capacity(self.batch);
        loop {
            // Wait for a first event, then gather until the batch is full or
            // the flush interval has passed.
            let first = tokio::select! {
                e = rx.recv() => e,
                _ = crate::shutdown::stopped(&mut stop) => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while batch.len() < self.batch {
                tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => batch.push(e),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = crate::shutdown::stopped(&mut stop) => break,
                }
            }
            if !self.send(&batch, &mut stop).await {
                break;
            }
            batch.clear();
        }
        // Stopping: what is queued gets one bounded try.
        rx.close();
        while let Ok(e) = rx.try_recv() {
            batch.push(e);
        }
        if !batch.is_empty() {
            let tried = tokio::time::timeout(FINAL_FLUSH, self.destination.deliver(&batch)).await;
            match tried {
                Ok(Ok(())) => {
                    self.delivered.inc_by(batch.len() as u64);
                }
                _ => {
                    self.dropped.inc_by(batch.len() as u64);
                    tracing::warn!(
                        destination = self.name,
                        events = batch.len(),
                        "events left undelivered at shutdown"
                    );
                }
            }
        }
    }

    /// Delivers `batch`, trying again with backoff; false when the proxy
    /// stops first (the batch is then left for the final flush).
    async fn send(&self, batch: &[Arc<Event>], stop: &mut watch::Receiver<bool>) -> bool {
        let mut pause = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            // A delivery under way when the proxy stops is given up: the
            // batch goes to the final flush, which is bounded.
            let tried = tokio::select! {
                tried = self.destination.deliver(batch) => tried,
                _ = crate::shutdown::stopped(stop) => return false,
            };
            match tried {
                Ok(()) => {
                    self.delivered.inc_by(batch.len() as u64);
                    if failures > 0 {
                        tracing::info!(destination = self.name, failures, "event delivery resumed");
                    }
                    return true;
                }
                Err(error) => {
                    self.failed.inc();
                    failures += 1;
                    // One warning, then one every ten failures: a long outage
                    // does not flood the log.
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(
                            destination = self.name,
                            %error,
                            failures,
                            retry_in_ms = pause.as_millis() as u64,
                            "event delivery failed; trying again"
                        );
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = crate::shutdown::stopped(stop) => return false,
            }
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
}

/// A webhook: `POST` of `application/x-ndjson` over HTTP/1.1, a new
/// connection per batch (batches are at most one a second per destination).
struct Webhook {
    uri: Uri,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Webhook {
    fn new(uri: Uri) -> Webhook {
        let tls = (uri.scheme_str() == Some("https")).then(|| {
            let config = crate::tls::client_config(None).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no system CA certificates for the event webhook");
                Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            });
            tokio_rustls::TlsConnector::from(config)
        });
        Webhook { uri, tls }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        tokio::time::timeout(WEBHOOK_TIMEOUT, self.exchange(body))
            .await
            .map_err(|_| "the webhook did not answer in time".to_owned())?
    }

    async fn exchange(&self, body: Vec<u8>) -> Result<(), String> {
        let host = self.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to the webhook's host: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = Request::post(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::USER_AGENT, "sessiongate")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let status = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|_| "the webhook's host is not a valid TLS name".to_owned())?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with the webhook failed: {e}"))?;
                send(TokioIo::new(stream), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered {status}"))
        }
    }
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP with the webhook failed: {e}"))?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the webhook request failed: {e}"))?;
    let status = response.status();
    // Read the answer out so the connection ends cleanly.
    let _ = response.into_body().collect().await;
    drop(sender);
    let _ = conn.await;
    Ok(status)
}
