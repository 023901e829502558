//! `sluice-bench`: the load generator behind `bench/run.sh`.
//!
//! Every subcommand prints one JSON object on stdout with what it measured.
//! Streams use the fake upstream's scripted models (`fake:tokens=N,delay_ms=D`),
//! whose token `i` is `<i>`: a client counts tokens by counting `<` in the
//! token frames, so coalesced frames count right and nothing is parsed twice.
//!
//! - `stream`: rounds of C concurrent streams over the OpenAI API (direct to
//!   the fake upstream or through Sluice), a session over SSE, or a session
//!   over WebSocket. Sessions are created and subscribed before the round
//!   starts; the clock starts when the message is sent. Reports tokens/s,
//!   time to first token and inter-token gaps.
//! - `idle`: opens N WebSocket connections spread over S sessions and reports
//!   the server's resident memory before and after.
//! - `resume`: fills a session with E events, then times a client that
//!   resumes from cursor 0 until it has the last one.
//! - `cross`: two WebSocket clients of each session, one on the replica that
//!   owns it and one on another replica; reports how much later each event
//!   reaches the second.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Load generator for Sluice's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Concurrent streams; tokens/s, TTFT and inter-token gaps.
    Stream {
        /// How the client talks.
        #[arg(long, value_enum)]
        transport: Transport,
        /// `http://host:port` (the OpenAI transport appends `/v1`).
        #[arg(long)]
        base: String,
        /// Streams at once.
        #[arg(long)]
        concurrency: usize,
        /// Rounds of `concurrency` streams.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Tokens per stream.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// Pause between tokens at the fake upstream.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Idle time between a round's setup and its sends, and after each
        /// round, so a profiler's samples of the two phases can be told
        /// apart by time (bench/profile.sh). Not part of any measurement.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Idle WebSocket connections and the server's memory.
    Idle {
        /// `http://host:port` of Sluice.
        #[arg(long)]
        base: String,
        /// The server's pid, to read its resident memory.
        #[arg(long)]
        pid: u32,
        /// Connections to open.
        #[arg(long)]
        connections: usize,
        /// Sessions they are spread over.
        #[arg(long, default_value_t = 100)]
        sessions: usize,
    },
    /// Time to replay a session's events from cursor 0.
    Resume {
        /// `http://host:port` of Sluice.
        #[arg(long)]
        base: String,
        /// Events to replay (about: the session holds one answer of this many tokens).
        #[arg(long, default_value_t = 1000)]
        events: usize,
        /// Resumes to time.
        #[arg(long, default_value_t = 50)]
        repeats: usize,
    },
    /// Delivery latency added by a replica that does not own the session.
    Cross {
        /// The replica the first client connects to (it becomes the owner).
        #[arg(long)]
        owner: String,
        /// Another replica.
        #[arg(long)]
        other: String,
        /// Sessions streaming at once.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
        /// Tokens per answer.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// Pause between tokens at the fake upstream.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Transport {
    Openai,
    Sse,
    Ws,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = match Cli::parse().command {
        Command::Stream {
            transport,
            base,
            concurrency,
            rounds,
            tokens,
            delay_ms,
            pause_ms,
        } => {
            let pause = Duration::from_millis(pause_ms);
            stream(
                transport,
                &base,
                concurrency,
                rounds,
                &model(tokens, delay_ms),
                pause,
            )
            .await?
        }
        Command::Idle {
            base,
            pid,
            connections,
            sessions,
        } => idle(&base, pid, connections, sessions).await?,
        Command::Resume {
            base,
            events,
            repeats,
        } => resume(&base, events, repeats).await?,
        Command::Cross {
            owner,
            other,
            concurrency,
            tokens,
            delay_ms,
        } => cross(&owner, &other, concurrency, &model(tokens, delay_ms)).await?,
    };
    // The report is this program's output (stdout); progress goes to stderr.
    writeln!(std::io::stdout(), "{report}")?;
    Ok(())
}

/// The fake upstream's script, with `;` between keys: a comma in a model
/// name makes LiteLLM route to several models.
fn model(tokens: usize, delay_ms: u64) -> String {
    format!("fake:tokens={tokens};delay_ms={delay_ms}")
}

/// What one stream saw.
#[derive(Default)]
struct Observed {
    tokens: usize,
    ttft: Option<Duration>,
    gaps: Vec<Duration>,
}

impl Observed {
    fn token_frame(&mut self, frame: &str, started: Instant, last: &mut Instant) {
        let now = Instant::now();
        let count = frame.matches('<').count();
        if count == 0 {
            return;
        }
        if self.ttft.is_none() {
            self.ttft = Some(now - started);
        } else {
            self.gaps.push(now - *last);
        }
        *last = now;
        self.tokens += count;
    }
}

/// Milliseconds at percentile `p` (0 to 100) of `values`.
fn percentile(values: &mut [Duration], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank].as_secs_f64() * 1000.0
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        // A hang guard: no benchmark stream takes this long.
        .timeout(Duration::from_secs(300))
        .build()
        .expect("HTTP client")
}

async fn create_session(http: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<String> {
    let response = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"model": model}))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("create session: {}", response.status());
    }
    let body: Value = response.json().await?;
    Ok(body["id"].as_str().context("session id")?.to_owned())
}

async fn send_message(http: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<()> {
    let response = http
        .post(format!("{base}/v1/sessions/{id}/messages"))
        .json(&json!({"content": "go"}))
        .send()
        .await?;
    if response.status() != 202 {
        bail!("send: {}", response.status());
    }
    Ok(())
}

fn ws_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.replacen("http://", "ws://", 1))
}

/// Connects with Nagle's algorithm off, as browsers do.
async fn connect_ws(
    url: &str,
) -> anyhow::Result<(
    Ws,
    tokio_tungstenite::tungstenite::handshake::client::Response,
)> {
    Ok(tokio_tungstenite::connect_async_with_config(url, None, true).await?)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads WebSocket text frames until one contains `needle`.
async fn ws_until(ws: &mut Ws, needle: &str, mut each: impl FnMut(&str)) -> anyhow::Result<()> {
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message? {
            each(&text);
            if text.contains(needle) {
                return Ok(());
            }
        }
    }
    bail!("connection closed before {needle}")
}

/// An SSE response read as `data:` payloads.
struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// Calls `each` with every `data:` payload until one contains `needle`.
    async fn until(&mut self, needle: &str, mut each: impl FnMut(&str)) -> anyhow::Result<()> {
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = std::str::from_utf8(&block)?;
                for line in text.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        each(data);
                        if data.contains(needle) {
                            return Ok(());
                        }
                    }
                }
            }
            match self.body.next().await {
                // SSE lines may end in CRLF (Python servers send that).
                Some(chunk) => self
                    .buffer
                    .extend(chunk?.iter().copied().filter(|&b| b != b'\r')),
                None => bail!("stream ended before {needle}"),
            }
        }
    }
}

/// One stream over `transport`, started at the barrier.
async fn one_stream(
    transport: Transport,
    http: &reqwest::Client,
    base: &str,
    model: &str,
    barrier: &Barrier,
    waited: &mut bool,
    pause: Duration,
) -> anyhow::Result<Observed> {
    let mut seen = Observed::default();
    match transport {
        Transport::Openai => {
            let body = json!({"model": model, "stream": true,
                "messages": [{"role": "user", "content": "go"}]});
            barrier.wait().await;
            *waited = true;
            tokio::time::sleep(pause).await;
            let started = Instant::now();
            let response = http
                .post(format!("{base}/v1/chat/completions"))
                .json(&body)
                .send()
                .await?;
            if response.status() != 200 {
                bail!("chat completions: {}", response.status());
            }
            let mut last = started;
            SseReader::new(response)
                .until("[DONE]", |data| {
                    if data.contains("\"content\":\"<") {
                        seen.token_frame(data, started, &mut last);
                    }
                })
                .await?;
        }
        Transport::Sse => {
            let id = create_session(http, base, model).await?;
            let response = http
                .get(format!("{base}/v1/sessions/{id}/events"))
                .send()
                .await?;
            let mut reader = SseReader::new(response);
            reader.until("\"snapshot\"", |_| {}).await?;
            barrier.wait().await;
            *waited = true;
            tokio::time::sleep(pause).await;
            let started = Instant::now();
            send_message(http, base, &id).await?;
            let mut last = started;
            let mut end = String::new();
            reader
                .until("\"generation_end\"", |data| {
                    if data.contains("\"type\":\"token\"") {
                        seen.token_frame(data, started, &mut last);
                    }
                    end = data.to_owned();
                })
                .await?;
            ended_well(&end)?;
        }
        Transport::Ws => {
            let id = create_session(http, base, model).await?;
            let (mut ws, _) = connect_ws(&ws_url(base, &format!("/v1/sessions/{id}/ws"))).await?;
            ws_until(&mut ws, "\"snapshot\"", |_| {}).await?;
            barrier.wait().await;
            *waited = true;
            tokio::time::sleep(pause).await;
            let started = Instant::now();
            ws.send(Message::text(r#"{"type":"send","content":"go"}"#))
                .await?;
            let mut last = started;
            let mut end = String::new();
            ws_until(&mut ws, "\"generation_end\"", |text| {
                if text.contains("\"type\":\"token\"") {
                    seen.token_frame(text, started, &mut last);
                }
                end = text.to_owned();
            })
            .await?;
            ended_well(&end)?;
            let _ = ws.close(None).await;
        }
    }
    Ok(seen)
}

async fn stream(
    transport: Transport,
    base: &str,
    concurrency: usize,
    rounds: usize,
    model: &str,
    pause: Duration,
) -> anyhow::Result<Value> {
    let http = client();
    let mut ttfts = Vec::new();
    let mut gaps = Vec::new();
    let mut tokens = 0usize;
    let mut errors = 0usize;
    let mut busy = Duration::ZERO;
    for _ in 0..rounds {
        // Everyone waits at the barrier once set up; the clock starts there.
        let barrier = Arc::new(Barrier::new(concurrency + 1));
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, base, model, barrier) = (
                    http.clone(),
                    base.to_owned(),
                    model.to_owned(),
                    barrier.clone(),
                );
                tokio::spawn(async move {
                    let mut waited = false;
                    let result = one_stream(
                        transport,
                        &http,
                        &base,
                        &model,
                        &barrier,
                        &mut waited,
                        pause,
                    )
                    .await;
                    if !waited {
                        // Failed while setting up: never leave the others
                        // waiting at the barrier.
                        barrier.wait().await;
                    }
                    result
                })
            })
            .collect();
        barrier.wait().await;
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        for task in tasks {
            match task.await? {
                Ok(seen) => {
                    tokens += seen.tokens;
                    ttfts.extend(seen.ttft);
                    gaps.extend(seen.gaps);
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("stream failed: {e:#}");
                }
            }
        }
        busy += started.elapsed();
        tokio::time::sleep(pause).await;
    }
    Ok(json!({
        "transport": format!("{transport:?}").to_lowercase(),
        "concurrency": concurrency,
        "streams": concurrency * rounds,
        "errors": errors,
        "tokens": tokens,
        "tokens_per_s": tokens as f64 / busy.as_secs_f64(),
        "ttft_p50_ms": percentile(&mut ttfts, 50.0),
        "ttft_p99_ms": percentile(&mut ttfts, 99.0),
        "itl_p50_ms": percentile(&mut gaps, 50.0),
        "itl_p99_ms": percentile(&mut gaps, 99.0),
    }))
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// Opens a WebSocket from a chosen loopback source address, so that more
/// connections than one address has ephemeral ports can be made.
async fn connect_from(source: std::net::Ipv4Addr, url: &str) -> anyhow::Result<Ws> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .context("ws URL")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let tcp = socket.connect(host.parse()?).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await?;
    Ok(ws)
}

async fn idle(base: &str, pid: u32, connections: usize, sessions: usize) -> anyhow::Result<Value> {
    let http = client();
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(create_session(&http, base, "fake:tokens=1").await?);
    }
    let before = rss_kib(pid)?;
    let opened = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // A few hundred handshakes at a time; each connection waits for its
    // snapshot, so it is subscribed when counted.
    let mut held = Vec::with_capacity(connections);
    let mut pending = futures::stream::iter(0..connections)
        .map(|i| {
            let url = ws_url(base, &format!("/v1/sessions/{}/ws", ids[i % ids.len()]));
            // 20,000 connections per source address.
            let source = std::net::Ipv4Addr::new(127, 0, 1 + (i / 20_000) as u8, 1);
            let opened = opened.clone();
            async move {
                let mut ws = connect_from(source, &url).await?;
                ws_until(&mut ws, "\"snapshot\"", |_| {}).await?;
                opened.fetch_add(1, Ordering::Relaxed);
                anyhow::Ok(ws)
            }
        })
        .buffer_unordered(256);
    let mut errors = 0usize;
    while let Some(result) = pending.next().await {
        match result {
            Ok(ws) => held.push(ws),
            Err(e) => {
                if errors == 0 {
                    eprintln!("connection failed: {e:#}");
                }
                errors += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    // Let the server settle, then measure while every connection is open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let open = held.len();
    drop(held);
    Ok(json!({
        "connections": open,
        "errors": errors,
        "sessions": sessions,
        "open_seconds": elapsed.as_secs_f64(),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_connection_kib": (after.saturating_sub(before)) as f64 / open.max(1) as f64,
    }))
}

async fn resume(base: &str, events: usize, repeats: usize) -> anyhow::Result<Value> {
    let http = client();
    // One answer of `events` tokens, with no pause: about `events` + 4 events.
    let id = create_session(&http, base, &model(events, 0)).await?;
    let url = ws_url(base, &format!("/v1/sessions/{id}/ws"));
    let (mut ws, _) = connect_ws(&url).await?;
    ws_until(&mut ws, "\"snapshot\"", |_| {}).await?;
    ws.send(Message::text(r#"{"type":"send","content":"go"}"#))
        .await?;
    ws_until(&mut ws, "\"generation_end\"", |_| {}).await?;
    let session: Value = http
        .get(format!("{base}/v1/sessions/{id}"))
        .send()
        .await?
        .json()
        .await?;
    let last_seq = session["last_seq"].as_u64().context("last_seq")?;
    let last = format!("\"seq\":{last_seq},");
    let mut times = Vec::new();
    for _ in 0..repeats {
        let started = Instant::now();
        let (mut ws, _) = connect_ws(&format!("{url}?after=0")).await?;
        let mut replayed = 0usize;
        ws_until(&mut ws, &last, |_| replayed += 1).await?;
        times.push(started.elapsed());
        if replayed < last_seq as usize {
            bail!("replayed {replayed} frames, expected {last_seq}");
        }
    }
    Ok(json!({
        "events": last_seq,
        "repeats": repeats,
        "p50_ms": percentile(&mut times, 50.0),
        "p99_ms": percentile(&mut times, 99.0),
    }))
}

async fn cross(owner: &str, other: &str, concurrency: usize, model: &str) -> anyhow::Result<Value> {
    let http = client();
    let barrier = Arc::new(Barrier::new(concurrency + 1));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, owner, other, model, barrier) = (
                http.clone(),
                owner.to_owned(),
                other.to_owned(),
                model.to_owned(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                let mut waited = false;
                let result = async {
                    let id = create_session(&http, &owner, &model).await?;
                    let path = format!("/v1/sessions/{id}/ws");
                    let (mut near, _) = connect_ws(&ws_url(&owner, &path)).await?;
                    ws_until(&mut near, "\"snapshot\"", |_| {}).await?;
                    let (mut far, _) = connect_ws(&ws_url(&other, &path)).await?;
                    ws_until(&mut far, "\"snapshot\"", |_| {}).await?;
                    barrier.wait().await;
                    waited = true;
                    near.send(Message::text(r#"{"type":"send","content":"go"}"#))
                        .await?;
                    // Arrival time of each seq on both connections.
                    let arrivals = |ws: Ws| async move {
                        let mut ws = ws;
                        let mut times = Vec::new();
                        ws_until(&mut ws, "\"generation_end\"", |text| {
                            if let Some(seq) = seq_of(text) {
                                times.push((seq, Instant::now()));
                            }
                        })
                        .await?;
                        anyhow::Ok(times)
                    };
                    let (near, far) = tokio::join!(arrivals(near), arrivals(far));
                    let (near, far) = (near?, far?);
                    let mut added = Vec::new();
                    for (seq, at) in far {
                        if let Some((_, base)) = near.iter().find(|(s, _)| *s == seq) {
                            added.push(at.saturating_duration_since(*base));
                        }
                    }
                    anyhow::Ok(added)
                }
                .await;
                if !waited {
                    barrier.wait().await;
                }
                result
            })
        })
        .collect();
    barrier.wait().await;
    let mut added = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await? {
            Ok(a) => added.extend(a),
            Err(e) => {
                errors += 1;
                eprintln!("stream failed: {e:#}");
            }
        }
    }
    Ok(json!({
        "sessions": concurrency,
        "errors": errors,
        "events": added.len(),
        "added_p50_ms": percentile(&mut added, 50.0),
        "added_p99_ms": percentile(&mut added, 99.0),
    }))
}

/// A stream counts only if its answer ended normally.
fn ended_well(generation_end: &str) -> anyhow::Result<()> {
    if !generation_end.contains("\"finish_reason\":\"stop\"") {
        bail!("the answer did not end normally: {generation_end}");
    }
    Ok(())
}

/// The `seq` of a frame, without parsing the whole frame.
fn seq_of(text: &str) -> Option<u64> {
    let rest = &text[text.find("\"seq\":")? + 6..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}
