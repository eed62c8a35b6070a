//! Gateway benchmark, side by side in one run on one machine: an upstream
//! (nginx answering a fixed 1 KB body), nginx reverse-proxying it
//! (`proxy_pass` with `keepalive`, 1 worker) and `meridian-proxy` (one tokio
//! worker thread), both proxies pinned to core 0, each driven by the same
//! `wrk` (pinned to core 1 with the upstream, 64 connections):
//!
//! - at full speed, three rounds of every row in turn: each row's median
//!   round (req/s, p50, p99, p99.9) and the rounds' rates;
//! - at a fixed 50% of nginx's maximum (wrk's `delay()` spacing each
//!   connection's requests): the latency columns.
//!
//! Rows: the upstream direct, nginx, Meridian keyless, Meridian with key
//! auth (a key of 10,000 in the view, looked up by hash on every request),
//! Meridian with key auth + rate limit + quota (limits too high to refuse,
//! counted across replicas as always), Meridian answering from its response
//! cache (a keyless API with `cache_options`, every request a hit; expected
//! above nginx, which has no cache here), a Tyk OAS API with key auth and
//! `validateRequest` on a 1 KB JSON body `POST`ed (target: at least 0.8x
//! the key-auth row); then Meridian keyless at the same
//! 50% rate while other APIs are added, changed and deleted, counting every
//! error and non-2xx answer. Then scaling with cores: nginx and each
//! Meridian row with one worker, then two, with the CPU time per request.
//! Targets: Meridian with key auth >= 1.0x nginx's req/s; its p99 at 50%
//! load <= nginx's p99 + 1 ms; the all-checks row >= 0.95x the key-auth row
//! and >= 1.0x nginx's req/s (stretch 1.2x). Then resident memory holding
//! 10,000 idle keep-alive connections, each answered once, nginx beside
//! Meridian (reported, no target).
//!
//! Then limit accuracy across replicas (three `meridian-proxy` processes,
//! then two): a key's rate limit of [`RATE_LIMIT`] per 2 s with the traffic
//! split unevenly (70/25/5 at 2x the limit, 90/10 at 1.5x, 50/50 at 3x):
//! accepted per whole window / limit (target 0.95-1.05), beside what an
//! even split of the limit between replicas (Tyk's distributed rate
//! limiter) would accept of the same traffic; and a quota of [`QUOTA`]
//! spent at the same split: accepted above it (target 0).
//!
//! Needs `nginx` and `wrk` (Debian's `nginx-light` and `wrk`; scripts/setup
//! installs them when it can) and a release build of `meridian-proxy`:
//!
//! `cargo build --release --bin meridian-proxy && cargo run --release -p meridian-loadtest --bin proxy-bench [-- SECONDS]`

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_loadtest::wrk::{
    CONNECTIONS, Run, at_full_speed, clock_ticks_per_s, half_load_delay, memory_table,
    nginx_for_idle_connections, nginx_proxy, proxy_on_core_0, proxy_on_cores, upstream_and_nginx,
    wait_http, wrk, wrk_posting,
};
use meridian_tests::load::{even_split_admitted, paced, per_window, sent_per_window};
use meridian_tests::processes::{Group, free_port};
use meridian_tests::tyk::{GATEWAY_SECRET, start_key_issuer};
use meridian_tests::{Nats, eventually};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The row of the OAS API with `validateRequest` (it `POST`s a body).
const OAS_ROW: usize = 6;

/// Full-speed rounds of the main table (each row's median is reported).
const ROUNDS: usize = 3;

/// The run with the median rate.
fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    sorted[sorted.len() / 2]
}

/// Keys in the view (one of them is used).
const KEYS: usize = 10_000;

/// The accuracy table's rate limit, per 2 s window.
const RATE_LIMIT: usize = 1_000;

/// The accuracy table's quota.
const QUOTA: usize = 3_000;

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

    // Every process started here is in a group of its own, ended (workers
    // included) when the benchmark ends, fails or panics.
    let (_upstream, _nginx) = upstream_and_nginx(up_port, nginx_port)?;

    // Meridian: NATS and key-issuer in this process (on no pinned core),
    // meridian-proxy as its own process with one worker thread on core 0.
    let nats = Nats::start().await;
    let (key_issuer, _) = start_key_issuer(&nats, |_| {}).await;
    let command = proxy_on_core_0(&proxy_bin, &nats.url(), gw_port, admin_port);
    let mut proxy = Group::spawn("meridian-proxy", command)?;
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
    for (id, keyless) in [("open", true), ("keyed", false), ("cached", true)] {
        let mut def = serde_json::json!({"api_id": id, "name": id, "use_keyless": keyless,
            "proxy": {"listen_path": format!("/{id}/"), "target_url": format!("http://127.0.0.1:{up_port}"),
                "strip_listen_path": true},
            "version_data": {"not_versioned": true, "versions": {"Default": {"name": "Default"}}}});
        if id == "cached" {
            def["cache_options"] = serde_json::json!({"enable_cache": true, "cache_timeout": 600,
                "cache_all_safe_requests": true});
        }
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
    // Limits that never refuse here, counted as any others.
    let r = post(
        format!("{}/tyk/keys", key_issuer.url),
        serde_json::json!({"org_id": "bench", "rate": 1_000_000_000, "per": 1,
            "quota_max": 1_000_000_000_000i64, "quota_renewal_rate": 3600,
            "access_rights": {"keyed": {"api_id": "keyed", "versions": ["Default"]}}}),
    )
    .await?;
    let limited_key = r.json::<serde_json::Value>().await?["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // A Tyk OAS API whose createPet operation validates its 1 KB JSON
    // body (key auth as the key-auth row's).
    let oas = serde_json::json!({
        "openapi": "3.0.3", "info": {"title": "Pets", "version": "1.0.0"},
        "paths": {"/pets": {"post": {"operationId": "createPet",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
            "responses": {"200": {"description": "ok"}}}}},
        "components": {
            "schemas": {"Pet": {"type": "object", "required": ["id", "name"], "properties": {
                "id": {"type": "integer", "minimum": 1}, "name": {"type": "string", "maxLength": 64},
                "tags": {"type": "array", "items": {"type": "string"}},
                "notes": {"type": "string", "maxLength": 2048}}}},
            "securitySchemes": {"key": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
        "security": [{"key": []}],
        "x-tyk-api-gateway": {
            "info": {"id": "oas", "name": "oas", "state": {"active": true}},
            "upstream": {"url": format!("http://127.0.0.1:{up_port}")},
            "server": {"listenPath": {"value": "/oas/", "strip": true},
                "authentication": {"enabled": true, "securitySchemes": {"key": {"enabled": true}}}},
            "middleware": {"operations": {"createPet": {"validateRequest": {"enabled": true}}}}}
    });
    let r = post(format!("{admin}/tyk/apis/oas"), oas).await?;
    anyhow::ensure!(r.status().is_success(), "OAS API: {}", r.text().await?);
    let r = post(
        format!("{}/tyk/keys", key_issuer.url),
        serde_json::json!({"org_id": "bench", "access_rights": {"oas": {"api_id": "oas", "versions": ["Default"]}}}),
    )
    .await?;
    let oas_key = r.json::<serde_json::Value>().await?["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pet = serde_json::json!({"id": 7, "name": "Rex", "tags": ["dog", "good"],
        "notes": "n".repeat(970)})
    .to_string();
    anyhow::ensure!(
        (1000..1050).contains(&pet.len()),
        "the body is {} bytes",
        pet.len()
    );
    let r = http
        .get(format!("{admin}/tyk/reload?block=true"))
        .header("x-tyk-authorization", GATEWAY_SECRET)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "reload: {}", r.text().await?);

    let rows: [(&str, String, Option<&str>); 7] = [
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
        (
            "meridian with key auth + rate limit + quota",
            format!("http://127.0.0.1:{gw_port}/keyed/x"),
            Some(limited_key.as_str()),
        ),
        (
            "meridian cache hit (keyless, cache_options)",
            format!("http://127.0.0.1:{gw_port}/cached/x"),
            None,
        ),
        (
            "meridian OAS API, key auth + validateRequest on a 1 KB JSON body (POST)",
            format!("http://127.0.0.1:{gw_port}/oas/pets"),
            Some(oas_key.as_str()),
        ),
    ];
    // The rows that POST a body.
    let body_of = |row: usize| (row == OAS_ROW).then_some(pet.as_str());
    // Every row answers 200 before it is timed.
    for (i, (name, url, key)) in rows.iter().enumerate() {
        let mut req = match body_of(i) {
            Some(body) => http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_owned()),
            None => http.get(url),
        };
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
        println!("meridian-proxy pid {}", proxy.id());
        println!("nginx proxy pid {}", _nginx.id());
        let r = wrk(dir.path(), &rows[row].1, rows[row].2, secs, 0)?;
        println!("{}: {:.0} req/s", rows[row].0, r.rps);
        return Ok(());
    }
    println!(
        "gateway benchmark: wrk -t1 -c{CONNECTIONS} -d{seconds}s on core 1 with the upstream; both proxies on core 0 (1 worker each)\n"
    );
    // Full speed: ROUNDS rounds, each row once per round, so that every
    // row meets the host's slow and fast minutes alike; each row's median
    // round is reported (rows moved by 10-20% between single runs).
    for (i, (_, url, key)) in rows.iter().enumerate() {
        // A short warm-up fills connection pools.
        wrk_posting(dir.path(), url, *key, body_of(i), 2, 0)?;
    }
    let mut rounds: Vec<Vec<Run>> = vec![Vec::new(); rows.len()];
    for _ in 0..ROUNDS {
        for (i, ((_, url, key), runs)) in rows.iter().zip(&mut rounds).enumerate() {
            runs.push(wrk_posting(dir.path(), url, *key, body_of(i), seconds, 0)?);
        }
    }
    let full: Vec<Run> = rounds.iter().map(|runs| median(runs)).collect();
    let half_rate = full[1].rps / 2.0;
    let delay_ms = half_load_delay(dir.path(), &rows[1].1, full[1].rps, seconds)?;
    let mut half = Vec::new();
    for (i, (_, url, key)) in rows.iter().enumerate() {
        half.push(wrk_posting(
            dir.path(),
            url,
            *key,
            body_of(i),
            seconds,
            delay_ms,
        )?);
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

    println!(
        "full speed, {ROUNDS} rounds of every row in turn: each row's median round, and its rounds' rates\n"
    );
    println!("| row | req/s | p50 | p99 | p99.9 | errors | rounds (req/s) |");
    println!("|---|---|---|---|---|---|---|");
    for (((name, _, _), r), runs) in rows.iter().zip(&full).zip(&rounds) {
        let all: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.rps)).collect();
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.errors,
            all.join(", ")
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
    let limits_cost = full[4].rps / full[3].rps;
    println!(
        "\nmeridian with key auth: {ratio:.2}x nginx's req/s (target >= 1.0: {}); p99 at 50% load {p99_gap:+.2} ms against nginx's (target <= +1 ms: {})",
        if ratio >= 1.0 { "met" } else { "missed" },
        if p99_gap <= 1.0 { "met" } else { "missed" }
    );
    println!(
        "with rate limit + quota: {limits_cost:.2}x the key-auth row's req/s (target >= 0.95: {})",
        if limits_cost >= 0.95 { "met" } else { "missed" }
    );
    let all_checks = full[4].rps / full[1].rps;
    println!(
        "every check on (key auth + rate limit + quota): {all_checks:.2}x nginx's req/s (target >= 1.0: {}; stretch 1.2)",
        if all_checks >= 1.0 { "met" } else { "missed" }
    );
    let per_round = |row: usize| {
        rounds[row]
            .iter()
            .zip(&rounds[1])
            .map(|(m, n)| format!("{:.2}x", m.rps / n.rps))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "round by round against nginx's round: key auth {}; every check {}",
        per_round(3),
        per_round(4)
    );
    let cached = full[5].rps / full[1].rps;
    println!(
        "cache hit: {cached:.2}x nginx's req/s (expected above nginx without a cache: {})",
        if cached > 1.0 { "met" } else { "missed" }
    );
    let validated = full[OAS_ROW].rps / full[3].rps;
    println!(
        "OAS API with validateRequest on a 1 KB JSON body: {validated:.2}x the key-auth row's req/s (target >= 0.8: {})",
        if validated >= 0.8 { "met" } else { "missed" }
    );

    // Scaling with cores: every proxy row again with one worker, then two.
    let nginx_two_port = free_port();
    let nginx_two = nginx_proxy(up_port, nginx_two_port, 2)?;
    let (gw_two, admin_two) = (free_port(), free_port());
    let proxy_two = Group::spawn(
        "meridian-proxy",
        proxy_on_cores(&proxy_bin, &nats.url(), gw_two, admin_two, 2),
    )?;
    wait_http(&format!("http://127.0.0.1:{admin_two}/readyz")).await?;
    let two = |url: &str| url.replacen(&format!(":{gw_port}/"), &format!(":{gw_two}/"), 1);
    let mut scaling = vec![
        ScalingRow::new("nginx proxy_pass", 1, &rows[1].1, None, _nginx.id()),
        ScalingRow::new(
            "nginx proxy_pass",
            2,
            &format!("http://127.0.0.1:{nginx_two_port}/api/x"),
            None,
            nginx_two.id(),
        ),
    ];
    for (name, url, key) in &rows[2..5] {
        scaling.push(ScalingRow::new(name, 1, url, *key, proxy.id()));
        scaling.push(ScalingRow::new(name, 2, &two(url), *key, proxy_two.id()));
    }
    scaling_table(dir.path(), &mut scaling, seconds)?;
    drop((nginx_two, proxy_two));

    // Memory at 10,000 idle keep-alive connections, beside nginx's.
    let nginx_big_port = free_port();
    let nginx_big = nginx_for_idle_connections(up_port, nginx_big_port)?;
    memory_table(&[
        ("nginx proxy_pass", nginx_big_port, "/api/x", nginx_big.id()),
        (
            "meridian-proxy keyless (one worker)",
            gw_port,
            "/open/x",
            proxy.id(),
        ),
    ])
    .await?;
    drop(nginx_big);

    // Accuracy across replicas, on replicas of their own.
    proxy.stop();
    accuracy(&proxy_bin, &nats, &key_issuer.url, &http).await
}

/// One row of the scaling table.
struct ScalingRow {
    name: String,
    workers: usize,
    url: String,
    key: Option<String>,
    pgid: u32,
}

impl ScalingRow {
    fn new(name: &str, workers: usize, url: &str, key: Option<&str>, pgid: u32) -> Self {
        Self {
            name: name.into(),
            workers,
            url: url.into(),
            key: key.map(str::to_owned),
            pgid,
        }
    }
}

/// Runs each row at full speed (nginx's rows first, each one-worker row
/// before its two-worker row) and prints the table: req/s beside nginx's
/// with as many workers and beside the row's own one-worker rate, p99, and
/// the CPU µs per request of the proxy's processes.
fn scaling_table(dir: &Path, rows: &mut [ScalingRow], seconds: u64) -> anyhow::Result<()> {
    let ticks_per_s = clock_ticks_per_s()?;
    println!(
        "\nscaling: each proxy with one worker (core 0), then two (cores 0 and 1); the same wrk on core 1 with the upstream, so the second worker shares a core with them (this machine has 2 cores)\n"
    );
    println!(
        "| row | workers | req/s | x nginx, same workers | x its one-worker rate | p99 | CPU µs/req user | kernel |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut nginx, mut one) = ([0.0; 3], 0.0);
    for row in rows.iter() {
        let (run, cpu) = at_full_speed(
            dir,
            &row.url,
            row.key.as_deref(),
            Some(row.pgid),
            seconds,
            ticks_per_s,
        )?;
        if row.name.starts_with("nginx") {
            nginx[row.workers] = run.rps;
        }
        if row.workers == 1 {
            one = run.rps;
        }
        let (user, kernel) = cpu.unwrap_or_default();
        println!(
            "| {} | {} | {:.0} | {:.2}x | {:.2}x | {:.2} ms | {user:.1} | {kernel:.1} |",
            row.name,
            row.workers,
            run.rps,
            run.rps / nginx[row.workers],
            run.rps / one,
            run.p99_ms
        );
    }
    Ok(())
}

/// Starts `meridian-proxy` replica processes sending the rate window in
/// `X-RateLimit-*`; returns each with its gateway and admin URLs.
async fn replicas(
    proxy_bin: &Path,
    nats: &Nats,
    count: usize,
) -> anyhow::Result<Vec<(Group, String, String)>> {
    let mut started = Vec::new();
    for i in 0..count {
        let (gw, admin) = (free_port(), free_port());
        let mut command = Command::new(proxy_bin);
        command
            .env("MERIDIAN_PROXY__WORKERS", "1")
            .env("MERIDIAN_LOG", "warn")
            .env("MERIDIAN_PROXY__NATS_URL", nats.url())
            .env("MERIDIAN_PROXY__SECRET", GATEWAY_SECRET)
            .env("MERIDIAN_PROXY__LISTEN", format!("127.0.0.1:{gw}"))
            .env("MERIDIAN_PROXY__HTTP_ADDR", format!("127.0.0.1:{admin}"))
            .env("MERIDIAN_PROXY__RATE_LIMIT_RESPONSE_HEADERS", "rate_limits")
            .stdout(Stdio::null());
        let group = Group::spawn(&format!("meridian-proxy replica {i}"), command)?;
        let admin = format!("http://127.0.0.1:{admin}");
        wait_http(&format!("{admin}/readyz")).await?;
        started.push((group, format!("http://127.0.0.1:{gw}/keyed/x"), admin));
    }
    Ok(started)
}

/// Waits until the replica at `admin` hears `count` live replicas.
async fn live(http: &reqwest::Client, admin: &str, count: usize) -> anyhow::Result<()> {
    let heard = eventually(Duration::from_secs(15), || async {
        let hello: serde_json::Value = http
            .get(format!("{admin}/hello"))
            .header("x-tyk-authorization", GATEWAY_SECRET)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let live = hello["details"]["replicas"]["output"].as_str()?.to_owned();
        live.starts_with(&format!("{count} live")).then_some(())
    })
    .await;
    heard.ok_or_else(|| anyhow::anyhow!("{count} replicas never heard of each other"))
}

/// The second table: rate-limit and quota accuracy with the load split
/// unevenly between replicas.
async fn accuracy(
    proxy_bin: &Path,
    nats: &Nats,
    key_issuer: &str,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let mut running = replicas(proxy_bin, nats, 3).await?;
    live(http, &running[0].2, 3).await?;
    println!(
        "\nlimits across replicas: a rate limit of {RATE_LIMIT} per 2 s and a quota of {QUOTA}, traffic split unevenly (meridian-proxy processes, 1 worker each)\n"
    );
    println!(
        "| replicas | split | load | whole windows | accepted / limit per window | an even split of the limit (Tyk's DRL) would accept | quota accepted | quota overshoot |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let scenarios: [(&[f64], f64); 3] = [
        (&[0.7, 0.25, 0.05], 2.0),
        (&[0.9, 0.1], 1.5),
        (&[0.5, 0.5], 3.0),
    ];
    for (shares, load) in scenarios {
        while running.len() > shares.len() {
            let (mut gone, _, _) = running.pop().expect("a replica");
            gone.stop();
            live(http, &running[0].2, running.len()).await?;
        }
        let key = |session: serde_json::Value| async move {
            let r = http
                .post(format!("{key_issuer}/tyk/keys"))
                .header("x-tyk-authorization", GATEWAY_SECRET)
                .json(&session)
                .send()
                .await?;
            let body: serde_json::Value = r.json().await?;
            anyhow::Ok(body["key"].as_str().unwrap_or_default().to_owned())
        };
        let rights = serde_json::json!({"keyed": {"api_id": "keyed", "versions": ["Default"]}});
        let rated = key(
            serde_json::json!({"org_id": "bench", "rate": RATE_LIMIT, "per": 2,
            "access_rights": rights}),
        )
        .await?;
        let quota = key(serde_json::json!({"org_id": "bench", "quota_max": QUOTA,
            "quota_renewal_rate": 3600, "access_rights": rights}))
        .await?;
        let per_s = RATE_LIMIT as f64 / 2.0 * load;
        // Both keys applied on every live replica.
        let r = http
            .get(format!("{}/tyk/reload?block=true", running[0].2))
            .header("x-tyk-authorization", GATEWAY_SECRET)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "reload: {}", r.text().await?);

        // Rate: 11 s, five or so whole windows.
        let started = meridian_kit::time::now_ms();
        let until = Instant::now() + Duration::from_secs(11);
        let sends: Vec<_> = running
            .iter()
            .zip(shares)
            .map(|((_, url, _), share)| {
                tokio::spawn(paced(
                    url.clone(),
                    Some(rated.clone()),
                    per_s * share,
                    until,
                ))
            })
            .collect();
        let mut answers = Vec::new();
        let mut sent = Vec::new();
        for s in sends {
            let got = s.await?;
            sent.push(sent_per_window(&got, 2_000));
            answers.extend(got);
        }
        let windows = per_window(&answers, 2_000, started, meridian_kit::time::now_ms());
        anyhow::ensure!(!windows.is_empty(), "no whole window");
        let ratios: Vec<f64> = windows
            .values()
            .map(|n| *n as f64 / RATE_LIMIT as f64)
            .collect();
        let even: Vec<f64> = windows
            .keys()
            .map(|end| even_split_admitted(&sent, RATE_LIMIT, *end) as f64 / RATE_LIMIT as f64)
            .collect();
        let range = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{lo:.3}-{hi:.3}")
        };

        // Quota: the same split until well past what it allows.
        let secs = QUOTA as f64 / per_s * 1.5;
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let sends: Vec<_> = running
            .iter()
            .zip(shares)
            .map(|((_, url, _), share)| {
                tokio::spawn(paced(
                    url.clone(),
                    Some(quota.clone()),
                    per_s * share,
                    until,
                ))
            })
            .collect();
        let mut admitted = 0;
        for s in sends {
            admitted += s.await?.iter().filter(|a| a.status == 200).count();
        }
        let split: Vec<String> = shares.iter().map(|s| format!("{:.0}", s * 100.0)).collect();
        println!(
            "| {} | {} | {load}x | {} | {} | {} | {admitted} of {QUOTA} | {} |",
            shares.len(),
            split.join("/"),
            windows.len(),
            range(&ratios),
            range(&even),
            admitted.saturating_sub(QUOTA)
        );
    }
    Ok(())
}
