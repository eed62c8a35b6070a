//! The shell examples of the README and of every page under `docs/`, run as
//! written, in the README's order, against a hub started the way the README
//! starts it (`meridian up`, here on free ports with its own data
//! directory), so the README cannot drift from what the hub does.
//!
//! Each command of a `sh` block runs in `sh` from a directory whose
//! `.meridian/` is the hub's data directory. What the README writes as a
//! placeholder (`a51d...`, `e629...`, `<id>`, `9c0e...`, `5f0c...`, an OAuth
//! client's `7d1f...` and `c2b0...`, its token `e3a9...`) is replaced by the
//! id an earlier answer gave, the way a reader would; `scripts/meridian` is
//! the built `meridian` binary. A `curl` must get a 2xx. Commands that start
//! or deploy other things (the quick start, compose, Kubernetes, the nats
//! CLI, benchmarks) are listed in `SKIPPED`; any other command fails the
//! test until it is run here. Then the hub stops, and the README's
//! `rebuild` reproduces its digest.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use meridian_tests::processes::{GroupGuard, group_alive};
use meridian_tests::*;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// Examples that run something this test cannot or should not (the quick
/// start itself, container and cluster deployments, another CLI, long
/// benchmarks), by prefix.
const SKIPPED: [&str; 7] = [
    "scripts/up",
    "scripts/test",
    "docker compose",
    "kubectl",
    "cargo run -q -p meridian-agent",
    "nats consumer",
    "scripts/setup && ",
];

/// The pages whose examples run, in the order the README lists them (each
/// page's examples may use what an earlier one made).
const PAGES: [&str; 9] = [
    "README.md",
    "docs/running.md",
    "docs/configuration.md",
    "docs/hub.md",
    "docs/gateway.md",
    "docs/portal.md",
    "docs/console.md",
    "docs/events.md",
    "docs/benchmarks.md",
];

/// The commands of the `sh` blocks of every page, continuation lines joined,
/// comments and blank lines left out.
fn readme_commands() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut commands = Vec::new();
    for page in PAGES {
        let text =
            std::fs::read_to_string(root.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        commands.extend(sh_commands(&text));
    }
    commands
}

/// Every page under `docs/` is one whose examples run: a new page not
/// listed in `PAGES` would have its examples silently untested.
#[test]
fn every_page_of_the_docs_is_run() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    for entry in std::fs::read_dir(&docs).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            let page = format!("docs/{name}");
            assert!(
                PAGES.contains(&page.as_str()),
                "{page} is not in readme.rs's PAGES: its examples would not run"
            );
        }
    }
    let readme = std::fs::read_to_string(docs.join("../README.md")).unwrap();
    for page in &PAGES[1..] {
        assert!(
            readme.contains(&format!("]({page})")),
            "the README does not link {page}"
        );
    }
}

/// The commands of one page's `sh` blocks.
fn sh_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split(" # ").next().unwrap().trim_end();
        let code = code.trim();
        if code.is_empty() || code.starts_with('#') {
            continue;
        }
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        commands.push(std::mem::take(&mut pending));
    }
    commands
}

/// `meridian up` on free ports with `dir/.meridian` as its data directory;
/// returns the process and what it printed: hub URL, NATS URL, gateway URL,
/// admin key, demo agent id.
async fn meridian_up(
    dir: &Path,
) -> (
    tokio::process::Child,
    GroupGuard,
    BTreeMap<&'static str, String>,
) {
    let mut child = tokio::process::Command::new(workspace_binary("meridian"))
        .args(["up", "--data-dir", ".meridian"])
        .args([
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .env_remove("MERIDIAN_API_KEY")
        .env_remove("MERIDIAN_GATEWAY_SECRET")
        .env_remove("TYK_GW_SECRET")
        .env("MERIDIAN_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        // Its own group: the nats-server it starts ends with it, whatever
        // happens to the test.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let group = GroupGuard::new("meridian up", child.id().unwrap());
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = BTreeMap::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("meridian up: {line}");
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["REST", "API", url, ..] => printed.insert("hub", (*url).to_owned()),
                ["NATS", url, ..] => printed.insert("nats", (*url).to_owned()),
                ["gateway", url, ..] => printed.insert("gateway", (*url).to_owned()),
                ["admin", "key", key, ..] => printed.insert("key", (*key).to_owned()),
                ["demo", .., "agent", id] => {
                    printed.insert("demo agent", (*id).to_owned());
                    return;
                }
                _ => None,
            };
        }
    })
    .await;
    assert!(read.is_ok(), "meridian up did not print its addresses");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("meridian up: {line}");
        }
    });
    (child, group, printed)
}

/// The process groups the README's commands ran in, to check at the end
/// that none is left running.
static GROUPS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Runs one command in `sh` from `dir`, in a process group of its own that
/// is ended when the command finishes or runs out of time (a command that
/// runs until stopped, such as `meridian events tail`, is stopped then);
/// returns exit status, stdout, stderr (`None`: it was still running).
async fn sh(
    dir: &Path,
    env: &[(&str, &str)],
    command: &str,
    within: Duration,
) -> Option<(i32, String, String)> {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let group = GroupGuard::new(command, child.id().unwrap());
    GROUPS.lock().unwrap().push(group.id());
    let out = tokio::time::timeout(within, child.wait_with_output()).await;
    drop(group);
    let out = out.ok()?.unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_example_works_as_written() {
    let commands = readme_commands();
    assert!(commands.len() > 20, "the README's examples were not found");
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, hub_group, printed) = meridian_up(dir.path()).await;
    let (hub_url, nats_url, key) = (&printed["hub"], &printed["nats"], &printed["key"]);
    let demo_agent = printed["demo agent"].clone();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".meridian/admin-key"))
            .unwrap()
            .trim(),
        key,
        "the printed key is the kept one"
    );
    let api = Api::new(hub_url, hub_url)
        .with_scheduler(hub_url)
        .with_key(Some(key));
    // The demo provider's five, and the demo API `meridian up` defines on its gateway.
    api.wait_for_total("active", 6, Duration::from_secs(60))
        .await;
    let some_api = api.apis("active").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let meridian = workspace_binary("meridian");
    let env = [
        ("MERIDIAN_API_KEY", key.as_str()),
        ("MERIDIAN_HUB_URL", hub_url.as_str()),
        ("MERIDIAN_NATS_URL", nats_url.as_str()),
    ];
    let mut ids: BTreeMap<&str, String> = BTreeMap::new();
    ids.insert("e629...", demo_agent.clone());
    ids.insert("<id>", some_api);
    let mut prefix = String::new();
    let mut ran = 0;
    let mut rebuild = None;
    for command in &commands {
        if SKIPPED.iter().any(|s| command.starts_with(s)) {
            eprintln!("README example not run here (see SKIPPED): {command}");
            continue;
        }
        let mut line = command
            .replace("http://127.0.0.1:8000", hub_url)
            .replace("http://127.0.0.1:8080", &printed["gateway"]);
        for (placeholder, id) in &ids {
            line = line.replace(placeholder, id);
        }
        assert!(
            !line.contains("..."),
            "a placeholder of this example has no value yet: {command}"
        );
        line = line.replace("scripts/meridian", &meridian.display().to_string());
        if command.starts_with("H=") || command.starts_with("export ") {
            prefix.push_str(&line);
            prefix.push_str("; ");
            continue;
        }
        if command.starts_with("scripts/meridian rebuild") {
            rebuild = Some(line);
            continue;
        }
        ran += 1;
        let full = format!("{prefix}{line}");
        if command.starts_with("curl") {
            let (code, out, err) = sh(
                dir.path(),
                &env,
                &format!("{full} -w '\\n%{{http_code}}'"),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|| panic!("timed out: {command}"));
            assert_eq!(code, 0, "{command}: {err}");
            let (body, status) = out.rsplit_once('\n').unwrap();
            let status: u16 = status.trim().parse().unwrap();
            assert!(
                (200..300).contains(&status),
                "{command}: HTTP {status}: {body}"
            );
            let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            if command.contains("/api/agents/ ") && command.contains("-d ") {
                ids.insert("a51d...", answer["id"].as_str().unwrap().to_owned());
            }
            if command.contains("/sync-jobs ") {
                ids.insert("9c0e...", answer["id"].as_str().unwrap().to_owned());
            }
            if command.contains("-X POST $H/tyk/keys ") {
                ids.insert("5f0c...", answer["key"].as_str().unwrap().to_owned());
            }
            if command.contains("/tyk/oauth/clients/create ") {
                ids.insert("7d1f...", answer["client_id"].as_str().unwrap().to_owned());
                ids.insert("c2b0...", answer["secret"].as_str().unwrap().to_owned());
            }
            if command.contains("/oauth/token ") {
                ids.insert(
                    "e3a9...",
                    answer["access_token"].as_str().unwrap().to_owned(),
                );
            }
            // The portal's listings name the demo provider, Product and Plan.
            let find = |field: &str, value: &str| {
                answer
                    .as_array()
                    .and_then(|all| all.iter().find(|e| e[field] == value))
                    .and_then(|e| e["id"].as_str())
                    .map(str::to_owned)
            };
            if command.starts_with("curl -s $H/portal-api/providers ") {
                ids.insert(
                    "b7d2...",
                    find("name", "meridian-hub").expect("the demo provider"),
                );
            }
            if command.starts_with("curl -s $H/portal-api/products ") {
                let id = find("policy_id", "demo-portal-access").expect("the demo Product");
                ids.insert("3f6a...", id);
            }
            if command.starts_with("curl -s $H/portal-api/plans ") {
                ids.insert(
                    "c41e...",
                    find("policy_id", "demo-portal-free").expect("the demo Plan"),
                );
            }
            if command.contains("-X POST $H/portal-api/apps ") {
                ids.insert("0a9b...", answer["id"].as_str().unwrap().to_owned());
            }
            if command.contains("$H/portal-api/provisioning-requests ") {
                assert_eq!(answer["request"]["status"], "approved", "{answer}");
                assert!(answer["key"].is_string(), "{answer}");
            }
        } else if command.starts_with("scripts/meridian events tail") {
            // It follows the stream until stopped: it must still be running,
            // having printed no error, a few seconds in.
            let done = sh(dir.path(), &env, &full, Duration::from_secs(3)).await;
            assert!(done.is_none(), "{command} ended: {done:?}");
        } else if command.starts_with("scripts/meridian") {
            let (code, out, err) = sh(dir.path(), &env, &full, Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("timed out: {command}"));
            assert_eq!(code, 0, "{command}: {err}");
            assert!(!out.trim().is_empty(), "{command} printed nothing");
        } else {
            panic!(
                "a README example this test does not run (run it, or list it in SKIPPED): {command}"
            );
        }
    }
    assert!(ran >= 15, "only {ran} examples ran");

    // Stopped the way the README says (Ctrl-C), the hub says so; the
    // README's rebuild then reproduces its digest.
    let digest = api.get_ok("/api/repository/digest").await;
    let secret = std::fs::read_to_string(dir.path().join(".meridian/gateway-secret")).unwrap();
    let keys_digest = tyk::Tyk::new(hub_url)
        .with_secret(Some(secret.trim()))
        .get_ok("/api/keys/digest")
        .await;
    let portal_digest = api.get_ok("/api/portal/digest").await;
    let pid = hub.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped = tokio::time::timeout(Duration::from_secs(30), hub.wait()).await;
    assert!(stopped.is_ok_and(|s| s.unwrap().success()), "a clean stop");
    let rebuild = rebuild.expect("the README shows a rebuild");
    // The hub's own NATS is gone with it: the rebuild starts it again.
    let (code, out, err) = sh(dir.path(), &env[..1], &rebuild, Duration::from_secs(60))
        .await
        .expect("the rebuild finished");
    assert_eq!(code, 0, "{rebuild}: {err}");
    assert!(
        out.contains(&format!("\ndigest {}", digest["digest"].as_str().unwrap())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "keys digest {}",
            keys_digest["digest"].as_str().unwrap()
        )),
        "the README's Tyk examples left keys whose view the rebuild reproduces: {out}"
    );
    assert!(
        out.contains(&format!(
            "portal digest {}",
            portal_digest["digest"].as_str().unwrap()
        )),
        "the README's portal examples left a portal the rebuild reproduces: {out}"
    );

    // Nothing the examples started is still running (`meridian events
    // tail` runs until stopped; the hub started a nats-server).
    let hub_pgid = hub_group.id();
    drop(hub_group);
    let groups = GROUPS.lock().unwrap().clone();
    let left: Vec<u32> = groups
        .into_iter()
        .chain([hub_pgid])
        .filter(|pgid| group_alive(*pgid))
        .collect();
    assert!(
        left.is_empty(),
        "processes of the README's examples still run, in groups {left:?}"
    );
}
