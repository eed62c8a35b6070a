//! Gateway benchmark, side by side in one run on one machine: an upstream
//! (nginx answering a fixed 1 KB body), nginx reverse-proxying it
//! (`proxy_pass` with `keepalive`, 1 worker) and `meridian-proxy` (one tokio
//! worker thread), both proxies pinned to core 0, each driven by the same
//! `wrk` (pinned to core 1 with the upstream, 64 connections):
//!
//! - at full speed: req/s, p50, p99, p99.9;
//! - at a fixed 50% of nginx's maximum (wrk's `delay()` spacing each
//!   connection's requests): the latency columns.
//!
//! Rows: the upstream direct, nginx, Meridian keyless, Meridian with key
//! auth (a key of 10,000 in the view, looked up by hash on every request);
//! then Meridian keyless at the same 50% rate while other APIs are added,
//! changed and deleted, counting every error and non-2xx answer.
//! Targets: Meridian with key auth >= 1.0x nginx's req/s; its p99 at 50%
//! load <= nginx's p99 + 1 ms.
//!
//! Needs `nginx` and `wrk` (Debian's `nginx-light` and `wrk`; scripts/setup
//! installs them when it can) and a release build of `meridian-proxy`:
//!
//! `cargo build --release --bin meridian-proxy && cargo run --release -p meridian-loadtest --bin proxy-bench [-- SECONDS]`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_tests::processes::{Group, Nginx, free_port, nginx_conf, which};
use meridian_tests::tyk::{GATEWAY_SECRET, start_key_issuer};
use meridian_tests::{Nats, eventually};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Connections of every run.
const CONNECTIONS: usize = 64;

/// Keys in the view (one of them is used).
const KEYS: usize = 10_000;

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
}

const SCRIPT: &str = r#"
local rate_delay = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = key end
if rate_delay > 0 then
  function delay() return rate_delay end
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("BENCH %f %f %f %f %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, errors))
end
"#;

/// Drives `url` with wrk on core 1 for `seconds`; `delay_ms` spaces each
/// connection's requests (0: as fast as possible).
fn wrk(
    dir: &Path,
    url: &str,
    key: Option<&str>,
    seconds: u64,
    delay_ms: u64,
) -> anyhow::Result<Run> {
    let script = dir.join("bench.lua");
    std::fs::write(&script, SCRIPT)?;
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(which("wrk")?)
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s")])
        .args(["-s", script.to_str().unwrap(), url])
        .env("BENCH_DELAY_MS", delay_ms.to_string())
        .env("BENCH_KEY", key.unwrap_or(""))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .ok_or_else(|| anyhow::anyhow!("wrk printed no result: {text}"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    Ok(Run {
        rps: f[0],
        p50_ms: f[1],
        p99_ms: f[2],
        p999_ms: f[3],
        errors: f[4] as u64,
    })
}

async fn wait_http(url: &str) -> anyhow::Result<()> {
    let ok = eventually(Duration::from_secs(30), || async {
        reqwest::get(url).await.ok().map(|_| ())
    })
    .await;
    ok.ok_or_else(|| anyhow::anyhow!("{url} did not answer"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = meridian_tests::size_arg(10)? as u64;
    let proxy_bin = std::env::current_exe()?
        .parent()
        .unwrap()
        .join("meridian-proxy");
    anyhow::ensure!(
        proxy_bin.exists(),
        "{} is missing: cargo build --release --bin meridian-proxy",
        proxy_bin.display()
    );
    let dir = tempfile::tempdir()?;
    let (up_port, nginx_port, gw_port, admin_port) =
        (free_port(), free_port(), free_port(), free_port());

    // The upstream: a fixed 1 KB answer, on core 1 (with the generator).
    // Every process started here is in a group of its own, ended (workers
    // included) when the benchmark ends, fails or panics.
    let body = "x".repeat(1024);
    let _upstream = Nginx::start(
        &nginx_conf(&format!(
            "  server {{ listen 127.0.0.1:{up_port}; location / {{ default_type text/plain; return 200 '{body}'; }} }}"
        )),
        up_port,
        Some(1),
    )?;
    // nginx as the reference proxy, on core 0.
    let _nginx = Nginx::start(
        &nginx_conf(&format!(
            "  upstream up {{ server 127.0.0.1:{up_port}; keepalive {CONNECTIONS}; keepalive_requests 1000000; }}\n\
             server {{ listen 127.0.0.1:{nginx_port};\n\
               location /api/ {{ proxy_pass http://up/; proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}"
        )),
        nginx_port,
        Some(0),
    )?;

    // Meridian: NATS and key-issuer in this process (on no pinned core),
    // meridian-proxy as its own process with one worker thread on core 0.
    let nats = Nats::start().await;
    let (key_issuer, _) = start_key_issuer(&nats, |_| {}).await;
    let mut command = Command::new("taskset");
    command
        .args(["-c", "0"])
        .arg(&proxy_bin)
        .env("TOKIO_WORKER_THREADS", "1")
        .env("MERIDIAN_PROXY__WORKERS", "1")
        .env("MERIDIAN_LOG", "warn")
        .env("MERIDIAN_PROXY__NATS_URL", nats.url())
        .env("MERIDIAN_PROXY__SECRET", GATEWAY_SECRET)
        .env("MERIDIAN_PROXY__LISTEN", format!("127.0.0.1:{gw_port}"))
        .env(
            "MERIDIAN_PROXY__HTTP_ADDR",
            format!("127.0.0.1:{admin_port}"),
        )
        .stdout(Stdio::null());
    let _proxy = Group::spawn("meridian-proxy", command)?;
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_http(&format!("{admin}/readyz")).await?;
    wait_http(&format!("http://127.0.0.1:{up_port}/")).await?;
    wait_http(&format!("http://127.0.0.1:{nginx_port}/api/")).await?;
    let http = reqwest::Client::new();
    let post = |url: String, body: serde_json::Value| {
        http.post(url)
            .header("x-tyk-authorization", GATEWAY_SECRET)
            .json(&body)
            .send()
    };
    for (id, keyless) in [("open", true), ("keyed", false)] {
        let def = serde_json::json!({"api_id": id, "name": id, "use_keyless": keyless,
            "proxy": {"listen_path": format!("/{id}/"), "target_url": format!("http://127.0.0.1:{up_port}"),
                "strip_listen_path": true},
            "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}}});
        let r = post(format!("{admin}/tyk/apis"), def).await?;
        anyhow::ensure!(r.status().is_success(), "API {id}: {}", r.text().await?);
    }
    let mut key = String::new();
    for i in 0..KEYS {
        let r = post(
            format!("{}/tyk/keys", key_issuer.url),
            serde_json::json!({"org_id": "bench", "access_rights": {"keyed": {"api_id": "keyed", "versions": ["Default"]}}}),
        )
        .await?;
        let answer: serde_json::Value = r.json().await?;
        if i == KEYS / 2 {
            key = answer["key"].as_str().unwrap_or_default().to_owned();
        }
    }
    let r = http
        .get(format!("{admin}/tyk/reload?block=true"))
        .header("x-tyk-authorization", GATEWAY_SECRET)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "reload: {}", r.text().await?);

    let rows: [(&str, String, Option<&str>); 4] = [
        (
            "upstream direct",
            format!("http://127.0.0.1:{up_port}/x"),
            None,
        ),
        (
            "nginx proxy_pass",
            format!("http://127.0.0.1:{nginx_port}/api/x"),
            None,
        ),
        (
            "meridian keyless",
            format!("http://127.0.0.1:{gw_port}/open/x"),
            None,
        ),
        (
            "meridian with key auth",
            format!("http://127.0.0.1:{gw_port}/keyed/x"),
            Some(key.as_str()),
        ),
    ];
    // Every row answers 200 before it is timed.
    for (name, url, key) in &rows {
        let mut req = http.get(url);
        if let Some(k) = key {
            req = req.header("authorization", *k);
        }
        let status = req.send().await?.status();
        anyhow::ensure!(status.is_success(), "{name}: {status}");
    }

    // PROXY_BENCH_PROFILE=<seconds>: only drive the key-auth row that long
    // (to profile meridian-proxy, whose pid is printed, from outside).
    // PROXY_BENCH_ROW picks another row (1: nginx, whose master's pid is
    // printed).
    if let Ok(secs) = std::env::var("PROXY_BENCH_PROFILE") {
        let secs: u64 = secs.parse()?;
        let row: usize = std::env::var("PROXY_BENCH_ROW").map_or(Ok(3), |r| r.parse())?;
        println!("meridian-proxy pid {}", _proxy.id());
        println!("nginx proxy pid {}", _nginx.id());
        let r = wrk(dir.path(), &rows[row].1, rows[row].2, secs, 0)?;
        println!("{}: {:.0} req/s", rows[row].0, r.rps);
        return Ok(());
    }
    println!(
        "gateway benchmark: wrk -t1 -c{CONNECTIONS} -d{seconds}s on core 1 with the upstream; both proxies on core 0 (1 worker each)\n"
    );
    let mut full = Vec::new();
    for (_, url, key) in &rows {
        // A short warm-up fills connection pools.
        wrk(dir.path(), url, *key, 2, 0)?;
        full.push(wrk(dir.path(), url, *key, seconds, 0)?);
    }
    let half_rate = full[1].rps / 2.0;
    // Each connection waits `delay_ms` between requests (wrk's delay() is in
    // whole milliseconds): first as if answers took no time, then less by
    // the time an answer took through nginx at that rate, so that nginx
    // gets about half its maximum.
    let per_request_ms = CONNECTIONS as f64 * 1000.0 / half_rate;
    let first = per_request_ms.round().max(1.0) as u64;
    let probe = wrk(dir.path(), &rows[1].1, None, seconds.min(5), first)?;
    let answer_ms = (CONNECTIONS as f64 * 1000.0 / probe.rps - first as f64).max(0.0);
    let delay_ms = (per_request_ms - answer_ms).round().max(1.0) as u64;
    let mut half = Vec::new();
    for (_, url, key) in &rows {
        half.push(wrk(dir.path(), url, *key, seconds, delay_ms)?);
    }

    // Reloads under load: the same 50% rate on the keyless API while other
    // APIs are added, changed and deleted (each change confirmed on the
    // replica by a blocking reload). Every non-2xx counts as an error.
    let churn_stop = meridian_kit::CancellationToken::new();
    let churn = {
        let (http, admin, stop) = (http.clone(), admin.clone(), churn_stop.clone());
        let target = format!("http://127.0.0.1:{up_port}");
        tokio::spawn(async move {
            let mut changes = 0u64;
            let secret = ("x-tyk-authorization", GATEWAY_SECRET);
            while !stop.is_cancelled() {
                let id = format!("churn{changes}");
                let def = |listen: &str| {
                    serde_json::json!({"api_id": id, "name": id, "use_keyless": true,
                    "proxy": {"listen_path": listen, "target_url": target}})
                };
                let steps = [
                    http.post(format!("{admin}/tyk/apis"))
                        .json(&def(&format!("/{id}/"))),
                    http.put(format!("{admin}/tyk/apis/{id}"))
                        .json(&def(&format!("/{id}/v2/"))),
                    http.get(format!("{admin}/tyk/reload?block=true")),
                    http.delete(format!("{admin}/tyk/apis/{id}")),
                ];
                for step in steps {
                    let r = step.header(secret.0, secret.1).send().await?;
                    anyhow::ensure!(r.status().is_success(), "churn: {}", r.text().await?);
                }
                changes += 3;
            }
            anyhow::Ok(changes)
        })
    };
    let steady = rows[2].1.clone();
    let dir_path = dir.path().to_owned();
    let under_churn =
        tokio::task::spawn_blocking(move || wrk(&dir_path, &steady, None, seconds, delay_ms))
            .await??;
    churn_stop.cancel();
    let changes = churn.await??;

    println!("| row | req/s | p50 | p99 | p99.9 | errors |");
    println!("|---|---|---|---|---|---|");
    for ((name, _, _), r) in rows.iter().zip(&full) {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            r.rps, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
        );
    }
    println!(
        "\nat a fixed rate near 50% of nginx's maximum ({half_rate:.0} req/s asked: each of the {CONNECTIONS} connections waits {delay_ms} ms between requests)\n"
    );
    println!("| row | req/s | p50 | p99 | p99.9 | errors |");
    println!("|---|---|---|---|---|---|");
    for ((name, _, _), r) in rows.iter().zip(&half) {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            r.rps, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
        );
    }
    println!(
        "| meridian keyless while {changes} API changes were applied | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
        under_churn.rps,
        under_churn.p50_ms,
        under_churn.p99_ms,
        under_churn.p999_ms,
        under_churn.errors
    );
    let ratio = full[3].rps / full[1].rps;
    let p99_gap = half[3].p99_ms - half[1].p99_ms;
    println!(
        "\nmeridian with key auth: {ratio:.2}x nginx's req/s (target >= 1.0: {}); p99 at 50% load {p99_gap:+.2} ms against nginx's (target <= +1 ms: {})",
        if ratio >= 1.0 { "met" } else { "missed" },
        if p99_gap <= 1.0 { "met" } else { "missed" }
    );
    Ok(())
}
