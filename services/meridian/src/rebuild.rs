//! `meridian rebuild`: wipes the hub's repository and replays it from the
//! log, and folds `KEYS` and `PORTAL` afresh as a restarted key-issuer and
//! portal-sync do (their views live in memory only), printing the digests. With the hub stopped (it holds the repository), it starts the same
//! local NATS on the hub's data directory for the time of the replay, and
//! stops it after; `--nats-url` uses a running NATS instead (a separately
//! deployed hub).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use meridian_kit::nats_server::NatsServer;

use crate::up::NATS_URL_FILE;

/// What a rebuild reproduced.
pub struct Rebuilt {
    /// The repository.
    pub repository: meridian_inventory::RebuildReport,
    /// key-issuer's view.
    pub keys: meridian_key_issuer::DigestView,
    /// portal-sync's view.
    pub portal: meridian_portal_sync::DigestView,
}

impl std::fmt::Display for Rebuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.repository)?;
        write!(
            f,
            "folded KEYS to sequence {}\nkeys digest {}\nfolded PORTAL to sequence {}\nportal digest {}",
            self.keys.position, self.keys.digest, self.portal.position, self.portal.digest
        )
    }
}

/// Rebuilds the repository under `data_dir` from the log, and key-issuer's
/// view.
pub async fn rebuild(nats_url: Option<String>, data_dir: &Path) -> anyhow::Result<Rebuilt> {
    let mut _local = None;
    let url = match nats_url {
        Some(url) => url,
        None => {
            let marker = data_dir.join(NATS_URL_FILE);
            if let Ok(running) = std::fs::read_to_string(&marker)
                && answers(running.trim()).await
            {
                anyhow::bail!(
                    "the hub is running (its NATS is {}): stop it first (Ctrl-C where \
                     scripts/up runs); it holds the repository",
                    running.trim()
                );
            }
            let server = NatsServer::start(None, Some(data_dir.join("nats")))
                .context("starting the hub's NATS for the rebuild")?;
            tracing::info!(url = %server.url, "started the hub's nats-server for the rebuild");
            let url = server.url.clone();
            _local = Some(server);
            url
        }
    };
    let config = meridian_inventory::Config::new(&url, data_dir.join("inventory"), "unused");
    let repository = meridian_inventory::rebuild(config).await?;
    let keys = meridian_key_issuer::rebuild(&url).await?;
    let portal = meridian_portal_sync::rebuild(&url).await?;
    Ok(Rebuilt {
        repository,
        keys,
        portal,
    })
}

/// Whether something accepts connections at a NATS URL's host and port.
async fn answers(url: &str) -> bool {
    let Some(authority) = url.split("://").nth(1) else {
        return false;
    };
    let authority = authority.trim_end_matches('/');
    tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}
