//! Issue 31's bake-off on the bare forwarding path: the smallest honest
//! proxy of each candidate engine (keep-alive both ways, streaming bodies,
//! hop-by-hop headers dropped, `X-Forwarded-For` appended), each run alone
//! on core 0 with one thread, beside nginx's `proxy_pass` on the same core,
//! all driven by the same wrk on core 1 (with the upstream, nginx answering
//! a fixed 1 KB body). For each row: req/s and p50/p99/p99.9 at full speed
//! and at about 50% of nginx's maximum, the CPU time per request of the
//! proxy's processes split user/kernel (from `/proc`, over the full-speed
//! run), and the lines of our code the candidate needs. Last row: today's
//! `meridian-proxy` (keyless API, one worker, same core), for where the
//! product's path stands against its bare engine in the same run.
//!
//! `cargo run --release -p meridian-loadtest --bin forward-bakeoff --features engines [-- SECONDS]`
//! (without `engines`, the monoio and pingora rows are left out).
//! (needs nginx and wrk, and a release build of `meridian-proxy`, as
//! proxy-bench).

mod common;
mod fastpath;
mod http1;
mod hyper_local;
mod hyper_spawned;
// The two candidates with engines of their own: their crates (and cmake,
// for pingora's zlib-ng) only with `--features engines`, so the everyday
// build and CI's stay lean.
#[cfg(feature = "engines")]
mod pingora;
#[cfg(feature = "engines")]
mod uring;

use std::net::SocketAddr;
use std::process::Command;

use meridian_loadtest::wrk::{
    Run, at_full_speed, clock_ticks_per_s, half_load_delay, memory_table,
    nginx_for_idle_connections, nginx_proxy, proxy_on_core_0, proxy_on_cores, upstream_and_nginx,
    wait_http, wrk,
};
use meridian_tests::Nats;
use meridian_tests::processes::{Group, free_port};
use meridian_tests::tyk::GATEWAY_SECRET;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A candidate: its row's name, how `serve` names it, its sources (counted).
type Candidate = (&'static str, &'static str, &'static [&'static str]);

/// The candidates on tokio.
const CANDIDATES: [Candidate; 3] = [
    (
        "hyper, upstream I/O in its own task (today's shape)",
        "hyper-spawned",
        &[include_str!("hyper_spawned.rs"), include_str!("common.rs")],
    ),
    (
        "hyper tuned: upstream I/O in the client's task, writev",
        "hyper-local",
        &[include_str!("hyper_local.rs"), include_str!("common.rs")],
    ),
    (
        "httparse fast path, bytes forwarded",
        "fastpath",
        &[include_str!("fastpath.rs"), include_str!("http1.rs")],
    ),
];

/// The candidates with engines of their own.
#[cfg(feature = "engines")]
const ENGINES: &[Candidate] = &[
    (
        "httparse fast path on monoio (io_uring)",
        "uring",
        &[include_str!("uring.rs"), include_str!("http1.rs")],
    ),
    (
        "pingora as a library",
        "pingora",
        &[include_str!("pingora.rs")],
    ),
];
#[cfg(not(feature = "engines"))]
const ENGINES: &[Candidate] = &[];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        let [_, _, candidate, listen, upstream] = &args[..] else {
            anyhow::bail!("usage: forward-bakeoff serve CANDIDATE LISTEN_PORT UPSTREAM_PORT");
        };
        let (listen, upstream): (u16, u16) = (listen.parse()?, upstream.parse()?);
        let upstream_addr = SocketAddr::from(([127, 0, 0, 1], upstream));
        match candidate.as_str() {
            #[cfg(feature = "engines")]
            "pingora" => pingora::run(listen, upstream_addr),
            #[cfg(feature = "engines")]
            "uring" => return uring::run(listen, upstream_addr),
            _ => {}
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        return local.block_on(&runtime, serve(candidate.clone(), listen, upstream_addr));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

/// Runs one candidate on `listen`, forwarding to `upstream`, until killed.
async fn serve(candidate: String, listen: u16, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        stream.set_nodelay(true)?;
        match candidate.as_str() {
            "hyper-spawned" => {
                tokio::task::spawn_local(hyper_spawned::connection(stream, peer, upstream));
            }
            "hyper-local" => {
                tokio::task::spawn_local(hyper_local::connection(stream, peer, upstream));
            }
            "fastpath" => {
                tokio::task::spawn_local(fastpath::connection(stream, peer, upstream));
            }
            other => anyhow::bail!("no candidate {other:?}"),
        }
    }
}

/// Lines of code: neither blank nor only a comment.
fn code_lines(sources: &[&str]) -> usize {
    sources
        .iter()
        .flat_map(|s| s.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

/// One row of the table.
struct Row {
    name: String,
    url: String,
    /// The proxy's process group (none for the upstream itself).
    pgid: Option<u32>,
    lines: Option<usize>,
    full: Run,
    half: Run,
    /// CPU µs per request at full speed: user, kernel.
    cpu_us: Option<(f64, f64)>,
}

async fn bench() -> anyhow::Result<()> {
    let seconds: u64 = meridian_tests::size_arg(10)? as u64;
    let ticks_per_s = clock_ticks_per_s()?;
    let dir = tempfile::tempdir()?;
    let (up_port, nginx_port) = (free_port(), free_port());
    let (_upstream, nginx) = upstream_and_nginx(up_port, nginx_port)?;
    let me = std::env::current_exe()?;
    let mut candidates = Vec::new();
    if ENGINES.is_empty() {
        println!(
            "(the monoio and pingora candidates are built with --features engines: they are not in this run)\n"
        );
    }
    for (name, id, sources) in CANDIDATES.iter().chain(ENGINES) {
        let port = free_port();
        let mut command = Command::new("taskset");
        command.args(["-c", "0"]).arg(&me).args([
            "serve",
            id,
            &port.to_string(),
            &up_port.to_string(),
        ]);
        candidates.push((name, port, code_lines(sources), Group::spawn(id, command)?));
    }
    let mut rows = vec![
        Row::new(
            "upstream direct",
            format!("http://127.0.0.1:{up_port}/x"),
            None,
            None,
        ),
        Row::new(
            "nginx proxy_pass",
            format!("http://127.0.0.1:{nginx_port}/api/x"),
            Some(nginx.id()),
            None,
        ),
    ];
    for (name, port, lines, group) in &candidates {
        rows.push(Row::new(
            name,
            format!("http://127.0.0.1:{port}/x"),
            Some(group.id()),
            Some(*lines),
        ));
    }
    // NATS outlives the proxy (dropped after it), so the proxy stops cleanly.
    let (nats, meridian) = meridian_proxy(&me, up_port).await?;
    rows.push(Row::new(
        "meridian-proxy keyless (today's whole path)",
        meridian.1,
        Some(meridian.0.id()),
        None,
    ));
    for row in &rows {
        wait_http(&row.url).await?;
        let answer = reqwest::get(&row.url).await?;
        anyhow::ensure!(
            answer.status().is_success() && answer.text().await?.len() == 1024,
            "{}: not the upstream's 1 KB answer",
            row.name
        );
    }
    println!(
        "forwarding bake-off: wrk -t1 -c64 -d{seconds}s on core 1 with the upstream; each proxy alone on core 0, one thread\n"
    );
    for row in &mut rows {
        (row.full, row.cpu_us) =
            at_full_speed(dir.path(), &row.url, None, row.pgid, seconds, ticks_per_s)?;
    }
    let delay_ms = half_load_delay(dir.path(), &rows[1].url, rows[1].full.rps, seconds)?;
    for row in &mut rows {
        row.half = wrk(dir.path(), &row.url, None, seconds, delay_ms)?;
    }
    let nginx_rps = rows[1].full.rps;
    println!(
        "| row | req/s | x nginx | p50 | p99 | p99.9 | 50% load: req/s | p50 | p99 | p99.9 | CPU µs/req user | kernel | lines of our code | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (user, kernel) = r.cpu_us.map_or(("-".into(), "-".into()), |(u, k)| {
            (format!("{u:.1}"), format!("{k:.1}"))
        });
        println!(
            "| {} | {:.0} | {:.2}x | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {user} | {kernel} | {} | {} |",
            r.name,
            r.full.rps,
            r.full.rps / nginx_rps,
            r.full.p50_ms,
            r.full.p99_ms,
            r.full.p999_ms,
            r.half.rps,
            r.half.p50_ms,
            r.half.p99_ms,
            r.half.p999_ms,
            r.lines.map_or("-".into(), |l| l.to_string()),
            r.full.errors + r.half.errors,
        );
    }
    println!(
        "\n50% load: each connection waits {delay_ms} ms between requests (about half nginx's maximum). CPU: /proc utime and stime of the proxy's processes over the full-speed run (nginx: master and worker)."
    );

    // Scaling with cores: one worker, then two, for nginx and meridian-proxy.
    let nginx_two_port = free_port();
    let nginx_two = nginx_proxy(up_port, nginx_two_port, 2)?;
    let (gw_port, admin_port) = (free_port(), free_port());
    let meridian_two = Group::spawn(
        "meridian-proxy",
        proxy_on_cores(
            &me.with_file_name("meridian-proxy"),
            &nats.url(),
            gw_port,
            admin_port,
            2,
        ),
    )?;
    let two_url = format!("http://127.0.0.1:{gw_port}/open/x");
    wait_http(&format!("http://127.0.0.1:{admin_port}/readyz")).await?;
    let scaling = [
        ("nginx proxy_pass", 1, rows[1].url.clone(), nginx.id()),
        (
            "nginx proxy_pass",
            2,
            format!("http://127.0.0.1:{nginx_two_port}/api/x"),
            nginx_two.id(),
        ),
        (
            "meridian-proxy keyless",
            1,
            rows[rows.len() - 1].url.clone(),
            meridian.0.id(),
        ),
        ("meridian-proxy keyless", 2, two_url, meridian_two.id()),
    ];
    println!(
        "\nscaling: the same wrk on core 1; one worker on core 0, two workers on cores 0 and 1 (the second shares core 1 with wrk and the upstream: 2 cores are all this machine has)\n"
    );
    println!(
        "| proxy | workers | req/s | x its one-worker rate | p99 | CPU µs/req user | kernel |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut one = 0.0;
    for (name, workers, url, pgid) in &scaling {
        wait_http(url).await?;
        let (run, cpu) = at_full_speed(dir.path(), url, None, Some(*pgid), seconds, ticks_per_s)?;
        if *workers == 1 {
            one = run.rps;
        }
        let (user, kernel) = cpu.unwrap_or_default();
        println!(
            "| {name} | {workers} | {:.0} | {:.2}x | {:.2} ms | {user:.1} | {kernel:.1} |",
            run.rps,
            run.rps / one,
            run.p99_ms
        );
    }

    // Memory at 10,000 idle keep-alive connections, each having been
    // answered once.
    let nginx_big_port = free_port();
    let nginx_big = nginx_for_idle_connections(up_port, nginx_big_port)?;
    memory_table(&[
        ("nginx proxy_pass", nginx_big_port, "/api/x", nginx_big.id()),
        (
            "meridian-proxy keyless (one worker)",
            meridian_port(&rows),
            "/open/x",
            meridian.0.id(),
        ),
    ])
    .await
}

/// The port of the last row (today's meridian-proxy).
fn meridian_port(rows: &[Row]) -> u16 {
    let url = &rows[rows.len() - 1].url;
    let after = url.trim_start_matches("http://127.0.0.1:");
    after[..after.find('/').unwrap_or(after.len())]
        .parse()
        .unwrap_or_default()
}

/// Today's `meridian-proxy` beside this binary, one worker on core 0, with
/// a keyless API forwarding to the upstream; answers it and the API's URL.
async fn meridian_proxy(
    me: &std::path::Path,
    up_port: u16,
) -> anyhow::Result<(Nats, (Group, String))> {
    let bin = me.with_file_name("meridian-proxy");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build --release --bin meridian-proxy",
        bin.display()
    );
    let nats = Nats::start().await;
    let (gw_port, admin_port) = (free_port(), free_port());
    let command = proxy_on_core_0(&bin, &nats.url(), gw_port, admin_port);
    let group = Group::spawn("meridian-proxy", command)?;
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_http(&format!("{admin}/readyz")).await?;
    let http = reqwest::Client::new();
    let def = serde_json::json!({"api_id": "open", "name": "open", "use_keyless": true,
        "proxy": {"listen_path": "/open/", "target_url": format!("http://127.0.0.1:{up_port}"),
            "strip_listen_path": true}});
    for (method, url, body) in [
        (
            reqwest::Method::POST,
            format!("{admin}/tyk/apis"),
            Some(def),
        ),
        (
            reqwest::Method::GET,
            format!("{admin}/tyk/reload?block=true"),
            None,
        ),
    ] {
        let mut req = http
            .request(method, &url)
            .header("x-tyk-authorization", GATEWAY_SECRET);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await?;
        anyhow::ensure!(r.status().is_success(), "{url}: {}", r.text().await?);
    }
    Ok((nats, (group, format!("http://127.0.0.1:{gw_port}/open/x"))))
}

impl Row {
    fn new(name: &str, url: String, pgid: Option<u32>, lines: Option<usize>) -> Self {
        Self {
            name: name.to_owned(),
            url,
            pgid,
            lines,
            full: Run::default(),
            half: Run::default(),
            cpu_us: None,
        }
    }
}
