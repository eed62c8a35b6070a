//! Processes the tests and benchmarks start, each in a process group of its
//! own that is ended when its guard is dropped (passed, failed or
//! panicked): SIGTERM to the whole group, a wait, then SIGKILL to whatever
//! is left. Killing only the first process leaves its children running
//! (nginx's workers outlive a SIGKILLed master; a shell's children outlive
//! the shell), which is how `scripts/test` and `proxy-bench` used to leave
//! processes behind.
//!
//! [`Nginx`] is a real nginx on a free port (the gateway tests' normalising
//! upstream, the benchmark's reference), stopped the same way.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a group has to end after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// A process started in a group of its own; the group ends on drop.
pub struct Group {
    child: Child,
    name: String,
}

/// Ends process group `pgid` when dropped (for processes started elsewhere,
/// such as `tokio::process::Command` with `process_group(0)`): SIGTERM,
/// up to [`GRACE`], then SIGKILL; returns once none of the group is alive.
pub struct GroupGuard {
    pgid: u32,
    name: String,
}

impl GroupGuard {
    /// Guards the group led by `pgid`.
    pub fn new(name: &str, pgid: u32) -> Self {
        Self {
            pgid,
            name: name.to_owned(),
        }
    }

    /// The group id.
    pub fn id(&self) -> u32 {
        self.pgid
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        end_group(self.pgid, &self.name, || {});
    }
}

/// Ends group `pgid` (see [`GroupGuard`]); `reap` collects the leader when
/// the caller holds it (a zombie leader counts as gone).
fn end_group(pgid: u32, name: &str, mut reap: impl FnMut()) {
    if !group_alive(pgid) {
        return;
    }
    signal_group(pgid, "TERM");
    let deadline = Instant::now() + GRACE;
    loop {
        reap();
        if !group_alive(pgid) {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("{name}: still running {GRACE:?} after SIGTERM; killing its group");
            signal_group(pgid, "KILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (`TERM`, `KILL`) to every process of group `pgid`.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether any process of group `pgid` is alive (not a zombie).
pub fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid pgrp ...; comm may hold spaces.
                let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                let fields: Vec<&str> = after.split_whitespace().collect();
                fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
            })
        })
}

impl Group {
    /// Starts `command` as the leader of a new process group.
    pub fn spawn(name: &str, mut command: Command) -> std::io::Result<Self> {
        command.process_group(0);
        let child = command.spawn()?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    /// The leader's pid (also the group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Ends the whole group: SIGTERM, up to [`GRACE`] for it to go, then
    /// SIGKILL. Returns once no process of the group is alive.
    pub fn stop(&mut self) {
        let pgid = self.child.id();
        let child = &mut self.child;
        end_group(pgid, &self.name, || {
            let _ = child.try_wait();
        });
        let _ = self.child.wait();
    }

    /// Crashes the whole group: SIGKILL, no chance to finish anything.
    /// Returns once the leader is reaped.
    pub fn kill(&mut self) {
        signal_group(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a Debian program is installed, or how to install it.
pub fn which(name: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "{name} is not installed: apt-get install nginx-light wrk (scripts/setup does, as root)"
    )
}

/// A whole nginx configuration around `http_body` (one worker, no access
/// log, keep-alive connections kept; temporary files in `/tmp`, which the
/// workers, running as `nobody` under root, can write).
pub fn nginx_conf(http_body: &str) -> String {
    format!(
        "worker_processes 1;\npid nginx.pid;\nerror_log logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 120s;\n\
         client_body_temp_path /tmp; proxy_temp_path /tmp; fastcgi_temp_path /tmp;\n\
         uwsgi_temp_path /tmp; scgi_temp_path /tmp;\n{http_body}\n}}\n"
    )
}

/// A running nginx, stopped with its workers when dropped.
pub struct Nginx {
    group: Group,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on `conf` (a whole configuration, see [`nginx_conf`]),
    /// pinned to `core` when given, and waits until `port` accepts.
    pub fn start(conf: &str, port: u16, core: Option<usize>) -> anyhow::Result<Self> {
        let prefix = tempfile::tempdir()?;
        std::fs::create_dir_all(prefix.path().join("logs"))?;
        let path = prefix.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut command = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &core.to_string()]).arg(which("nginx")?);
                c
            }
            None => Command::new(which("nginx")?),
        };
        command
            .args([
                "-p",
                prefix.path().to_str().unwrap(),
                "-c",
                path.to_str().unwrap(),
            ])
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let group = Group::spawn("nginx", command)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "nginx did not listen on {port} within 10 s (see its error log above)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            group,
            _prefix: prefix,
        })
    }

    /// The master's pid (the group id of every nginx process).
    pub fn id(&self) -> u32 {
        self.group.id()
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
