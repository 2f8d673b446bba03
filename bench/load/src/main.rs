//! `bench/ingest`'s load generator. It POSTs signed GitHub deliveries over
//! keep-alive connections, each with a fresh `X-GitHub-Delivery` GUID and a
//! distinct body (as GitHub's are: a receiver may refuse the same signed body
//! under a new GUID as a replay). The body is a template whose marker, a
//! 40-digit commit SHA, is replaced per request; the HMAC state after the part
//! before the marker is computed once, so a request costs one HMAC over the
//! rest of the body, a copy, and the HTTP exchange.
//!
//! Two modes:
//! - closed loop (`--rate 0`, the default): each connection sends its next
//!   request when the last is answered, the way wrk does: the maximum rate;
//! - constant rate (`--rate R`): requests are due at fixed times, R per second
//!   across the connections, and latency counts from when a request was due,
//!   not when it was sent (what wrk2 does, and wrk cannot: a slow answer
//!   delays every request behind it, and that wait is latency too).
//!
//! Prints one JSON line: requests, duration_us, non2xx, socket_errors, p50_us,
//! p99_us, p999_us.
//!
//! Not wrk with a Lua script: signing a fresh 21 KB body per request in Lua
//! held one wrk thread to ~1,900 req/s, a fifth of what the receiver takes,
//! and wrk has no constant-rate mode.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;

/// The body's marker: a commit SHA replaced per request by one of the same length.
const MARKER: &[u8] = b"0000000000000000000000000000000000000001";

#[derive(Parser)]
#[command(about = "Signed GitHub deliveries, as fast as answered or at a constant rate")]
struct Args {
    /// Where to POST, e.g. http://127.0.0.1:8080/hooks/ns/hook.
    url: String,
    /// The body template (JSON containing the marker SHA once).
    #[arg(long, env = "BENCH_BODY")]
    body: PathBuf,
    /// The HMAC key.
    #[arg(long, env = "BENCH_KEY", hide_env_values = true)]
    key: String,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Requests per second across all connections; 0: as fast as answered.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Sign with a wrong key (the reject path).
    #[arg(long)]
    bad_signature: bool,
    /// Runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Stop after this many requests across all connections (0: when the
    /// seconds are up).
    #[arg(long, default_value_t = 0)]
    requests: u64,
}

/// What every connection shares.
struct Plan {
    addr: SocketAddr,
    authority: String,
    path: String,
    head: Bytes,
    tail: Bytes,
    /// HMAC state after the key and `head`.
    mac: Hmac<Sha256>,
    /// Unique per run: GUIDs and SHAs of two runs never meet.
    nonce: u32,
    start: Instant,
    end: Instant,
    /// Between two requests of one connection, in constant-rate mode.
    interval: Option<Duration>,
    connections: usize,
    /// Requests left to send when the run is bounded by a count.
    left: Option<std::sync::atomic::AtomicU64>,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    non2xx: u64,
    socket_errors: u64,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("hookwarden-load: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let rest = args.url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or(format!("{authority}: no address"))?;
    let template = std::fs::read(&args.body).map_err(|e| format!("{}: {e}", args.body.display()))?;
    let at = template.windows(MARKER.len()).position(|w| w == MARKER).ok_or("the body has no marker SHA")?;
    let key = if args.bad_signature { "not-the-key" } else { args.key.as_str() };
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(&template[..at]);
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos()
        ^ std::process::id().rotate_left(16);
    let start = Instant::now();
    let plan = Arc::new(Plan {
        addr,
        authority: authority.to_string(),
        path: if path.is_empty() { "/".into() } else { path.to_string() },
        head: Bytes::copy_from_slice(&template[..at]),
        tail: Bytes::copy_from_slice(&template[at + MARKER.len()..]),
        mac,
        nonce,
        start,
        end: start + Duration::from_secs_f64(args.seconds),
        interval: (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate)),
        connections: args.connections,
        left: (args.requests > 0).then(|| std::sync::atomic::AtomicU64::new(args.requests)),
    });
    let tasks: Vec<_> = (0..args.connections).map(|id| tokio::spawn(connection(plan.clone(), id))).collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.map_err(|e| e.to_string())?;
        all.latencies_us.extend(t.latencies_us);
        all.non2xx += t.non2xx;
        all.socket_errors += t.socket_errors;
    }
    let elapsed = start.elapsed();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let n = all.latencies_us.len();
        if n == 0 { 0 } else { all.latencies_us[((n as f64 * p) as usize).min(n - 1)] }
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": all.latencies_us.len(),
            "duration_us": elapsed.as_micros() as u64,
            "non2xx": all.non2xx,
            "socket_errors": all.socket_errors,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
        })
    );
    Ok(())
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(plan: &Plan) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(plan.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One keep-alive connection's requests until the end of the run; a closed
/// connection is opened again (and counted as a socket error when a request
/// was lost with it).
async fn connection(plan: Arc<Plan>, id: usize) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<Sender> = None;
    // Constant rate: this connection's requests are due at start + offset + k·interval.
    let offset = plan.interval.map(|i| i.mul_f64(id as f64 / plan.connections as f64));
    let mut body = BytesMut::new();
    for counter in 0u64.. {
        let due = match (plan.interval, offset) {
            (Some(interval), Some(offset)) => plan.start + offset + interval.mul_f64(counter as f64),
            _ => Instant::now(),
        };
        if due >= plan.end {
            break;
        }
        if let Some(left) = &plan.left {
            let took = left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if took.is_err() {
                break;
            }
        }
        tokio::time::sleep_until(due.into()).await;
        let sha = format!("{:08x}{:04x}{:028x}", plan.nonce, id, counter);
        let mut mac = plan.mac.clone();
        mac.update(sha.as_bytes());
        mac.update(&plan.tail);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        body.reserve(plan.head.len() + sha.len() + plan.tail.len());
        body.extend_from_slice(&plan.head);
        body.extend_from_slice(sha.as_bytes());
        body.extend_from_slice(&plan.tail);
        let request = Request::post(plan.path.as_str())
            .header(header::HOST, plan.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "GitHub-Hookshot/bench")
            .header("x-github-event", "pull_request")
            .header("x-github-hook-id", "1")
            .header("x-github-delivery", format!("{:08x}-{id}-{counter}", plan.nonce))
            .header("x-hub-signature-256", signature)
            .body(Full::new(body.split().freeze()))
            .expect("a valid request");
        let mut ready = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(&plan).await {
                Ok(s) => s,
                Err(_) => {
                    tally.socket_errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // Closed loop: from when it is sent; constant rate: from when it was due.
        let from = if plan.interval.is_some() { due } else { Instant::now() };
        let answered = match ready.ready().await {
            Ok(()) => ready.send_request(request).await,
            Err(e) => Err(e),
        };
        match answered {
            Ok(response) => {
                let ok = response.status().is_success();
                let drained = response.into_body().collect().await.is_ok();
                tally.latencies_us.push(from.elapsed().as_micros() as u64);
                if !ok {
                    tally.non2xx += 1;
                }
                if drained {
                    sender = Some(ready);
                }
            }
            Err(_) => tally.socket_errors += 1,
        }
    }
    tally
}
