//! wrk runs as the gateway benchmarks drive them: pinned to core 1, 64
//! connections, a Lua script printing rate and latency percentiles.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meridian_tests::eventually;
use meridian_tests::processes::{Nginx, nginx_conf, which};

/// Connections of every run.
pub const CONNECTIONS: usize = 64;

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Connect, read, write, timeout errors and non-2xx/3xx answers.
    pub errors: u64,
}

const SCRIPT: &str = r#"
local rate_delay = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = key end
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
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
pub fn wrk(
    dir: &Path,
    url: &str,
    key: Option<&str>,
    seconds: u64,
    delay_ms: u64,
) -> anyhow::Result<Run> {
    wrk_posting(dir, url, key, None, seconds, delay_ms)
}

/// [`wrk`], each request a `POST` of the JSON `body` when one is given.
pub fn wrk_posting(
    dir: &Path,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
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
        .env("BENCH_BODY", body.unwrap_or(""))
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

/// Waits up to 30 s until `url` answers at all.
pub async fn wait_http(url: &str) -> anyhow::Result<()> {
    let ok = eventually(Duration::from_secs(30), || async {
        reqwest::get(url).await.ok().map(|_| ())
    })
    .await;
    ok.ok_or_else(|| anyhow::anyhow!("{url} did not answer"))
}

/// The `delay_ms` that gives the proxy at `reference` (which served
/// `max_rps` at full speed) about half its maximum: each connection waits
/// that long between requests (wrk's delay() is in whole milliseconds),
/// first as if answers took no time, then less by the time an answer took
/// through it at that rate.
pub fn half_load_delay(
    dir: &Path,
    reference: &str,
    max_rps: f64,
    seconds: u64,
) -> anyhow::Result<u64> {
    let per_request_ms = CONNECTIONS as f64 * 1000.0 / (max_rps / 2.0);
    let first = per_request_ms.round().max(1.0) as u64;
    let probe = wrk(dir, reference, None, seconds.min(5), first)?;
    let answer_ms = (CONNECTIONS as f64 * 1000.0 / probe.rps - first as f64).max(0.0);
    Ok((per_request_ms - answer_ms).round().max(1.0) as u64)
}

/// `meridian-proxy` at `bin` pinned to core 0 with one worker, on
/// `gateway_port` (admin on `admin_port`), reading the log at `nats_url`.
pub fn proxy_on_core_0(bin: &Path, nats_url: &str, gateway_port: u16, admin_port: u16) -> Command {
    proxy_on_cores(bin, nats_url, gateway_port, admin_port, 1)
}

/// `meridian-proxy` with `workers` data-plane threads pinned to cores 0 to
/// `workers - 1`, otherwise as [`proxy_on_core_0`].
pub fn proxy_on_cores(
    bin: &Path,
    nats_url: &str,
    gateway_port: u16,
    admin_port: u16,
    workers: usize,
) -> Command {
    let cores = (0..workers)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new("taskset");
    command
        .args(["-c", &cores])
        .arg(bin)
        .env("TOKIO_WORKER_THREADS", "1")
        .env("MERIDIAN_PROXY__WORKERS", workers.to_string())
        .env("MERIDIAN_LOG", "warn")
        .env("MERIDIAN_PROXY__NATS_URL", nats_url)
        .env(
            "MERIDIAN_PROXY__SECRET",
            meridian_tests::tyk::GATEWAY_SECRET,
        )
        .env(
            "MERIDIAN_PROXY__LISTEN",
            format!("127.0.0.1:{gateway_port}"),
        )
        .env(
            "MERIDIAN_PROXY__HTTP_ADDR",
            format!("127.0.0.1:{admin_port}"),
        )
        .stdout(std::process::Stdio::null());
    command
}

/// The upstream (nginx answering a fixed 1 KB body on `up_port`, on core 1
/// with the generator) and nginx as the reference proxy (`proxy_pass` with
/// kept connections, one worker on core 0, `/api/` on `nginx_port`).
pub fn upstream_and_nginx(up_port: u16, nginx_port: u16) -> anyhow::Result<(Nginx, Nginx)> {
    let body = "x".repeat(1024);
    let upstream = Nginx::start(
        &nginx_conf(&format!(
            "  server {{ listen 127.0.0.1:{up_port}; location / {{ default_type text/plain; return 200 '{body}'; }} }}"
        )),
        up_port,
        Some(1),
    )?;
    let nginx = nginx_proxy(up_port, nginx_port, 1)?;
    Ok((upstream, nginx))
}

/// nginx as the reference proxy of the upstream on `up_port`: `proxy_pass`
/// with kept connections, `/api/` on `nginx_port`, `workers` worker
/// processes (one is pinned to core 0; more run on any core).
pub fn nginx_proxy(up_port: u16, nginx_port: u16, workers: usize) -> anyhow::Result<Nginx> {
    let conf = nginx_proxy_conf(up_port, nginx_port, workers);
    Nginx::start(&conf, nginx_port, (workers == 1).then_some(0))
}

/// The configuration [`nginx_proxy`] starts nginx with.
pub fn nginx_proxy_conf(up_port: u16, nginx_port: u16, workers: usize) -> String {
    nginx_conf(&format!(
        "  upstream up {{ server 127.0.0.1:{up_port}; keepalive {CONNECTIONS}; keepalive_requests 1000000; }}\n\
         server {{ listen 127.0.0.1:{nginx_port};\n\
           location /api/ {{ proxy_pass http://up/; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}"
    ))
    .replacen("worker_processes 1;", &format!("worker_processes {workers};"), 1)
}

/// Connections of the memory table.
pub const IDLE_CONNECTIONS: usize = 10_000;

/// nginx as [`nginx_proxy`] (one worker on core 0), allowed the file
/// descriptors and connections of the memory table.
pub fn nginx_for_idle_connections(up_port: u16, nginx_port: u16) -> anyhow::Result<Nginx> {
    Nginx::start(
        &nginx_proxy_conf(up_port, nginx_port, 1)
            .replacen("worker_connections 4096;", "worker_connections 16384;", 1)
            .replacen(
                "worker_processes 1;",
                "worker_processes 1;\nworker_rlimit_nofile 20000;",
                1,
            ),
        nginx_port,
        Some(0),
    )
}

/// Prints the memory table: for each `(name, port, path, process group)`,
/// the group's resident memory idle, then holding [`IDLE_CONNECTIONS`]
/// keep-alive connections that were each answered once (`path`).
pub async fn memory_table(proxies: &[(&str, u16, &str, u32)]) -> anyhow::Result<()> {
    println!(
        "\nmemory: resident set of the proxy's processes, idle, then holding {IDLE_CONNECTIONS} keep-alive connections that were each answered once\n"
    );
    println!("| proxy | RSS idle | RSS with connections | per connection |");
    println!("|---|---|---|---|");
    for &(name, port, path, pgid) in proxies {
        let idle = group_rss_kib(pgid);
        let held = idle_connections(port, path, IDLE_CONNECTIONS).await?;
        let loaded = group_rss_kib(pgid);
        drop(held);
        println!(
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
            idle as f64 / 1024.0,
            loaded as f64 / 1024.0,
            loaded.saturating_sub(idle) as f64 / IDLE_CONNECTIONS as f64
        );
    }
    Ok(())
}

/// Resident memory (KiB) of every process in group `pgid`.
pub fn group_rss_kib(pgid: u32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after.split_whitespace().nth(2) != Some(pgid.to_string().as_str()) {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Opens `n` connections to `port`, has one request on each answered
/// (`path`, a 1 KB answer), and keeps them open.
pub async fn idle_connections(
    port: u16,
    path: &str,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let open = |_| {
        let request = request.clone();
        async move {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            conn.write_all(request.as_bytes()).await?;
            let mut got = Vec::with_capacity(2048);
            // Head and the 1 KB body: read until the body's last byte.
            while !got.ends_with(&[b'x'; 16]) {
                if conn.read_buf(&mut got).await? == 0 {
                    anyhow::bail!("connection closed before its answer");
                }
            }
            Ok::<_, anyhow::Error>(conn)
        }
    };
    futures_util::stream::iter(0..n)
        .map(open)
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// User and kernel CPU time (clock ticks) of every process in group `pgid`.
pub fn group_cpu(pgid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ... utime stime: fields 14 and 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) {
            total.0 += fields
                .get(11)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            total.1 += fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The kernel's clock ticks per second (`/proc` CPU times are in them).
pub fn clock_ticks_per_s() -> anyhow::Result<f64> {
    Ok(
        String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
            .trim()
            .parse()?,
    )
}

/// A short warm-up, then a full-speed run of `url` (with `key`), with the CPU µs per
/// request (user, kernel) of process group `pgid` over it.
pub fn at_full_speed(
    dir: &Path,
    url: &str,
    key: Option<&str>,
    pgid: Option<u32>,
    seconds: u64,
    ticks_per_s: f64,
) -> anyhow::Result<(Run, Option<(f64, f64)>)> {
    wrk(dir, url, key, 2, 0)?;
    let before = pgid.map(group_cpu);
    let run = wrk(dir, url, key, seconds, 0)?;
    let cpu = match (pgid, before) {
        (Some(pgid), Some(before)) => {
            let after = group_cpu(pgid);
            let requests = run.rps * seconds as f64;
            let us = |ticks: u64| ticks as f64 / ticks_per_s * 1e6 / requests;
            Some((us(after.0 - before.0), us(after.1 - before.1)))
        }
        _ => None,
    };
    Ok((run, cpu))
}
