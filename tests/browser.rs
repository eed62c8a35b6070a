//! A real browser for the web console's tests: Debian's `chromium`, headless,
//! driven through `chromedriver` (started on a free port in a process group
//! of its own, which Chromium joins: the whole group ends on drop, whether
//! the test passed or panicked)
//! with fantoccini. `scripts/setup` installs both (as root, with apt); when
//! they are missing the test fails saying how to install them.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A headless Chromium session; chromedriver and Chromium end when it is
/// dropped.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    _driver: crate::processes::Group,
}

fn find_program(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/bin".into(), "/usr/lib/chromium".into()]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` x
    /// `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let how = "install Debian's chromium and chromium-driver: run scripts/setup as root, or apt-get install chromium chromium-driver";
        let driver_bin = find_program(&["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver is not installed; {how}"));
        let chromium = find_program(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("chromium is not installed; {how}"));
        let port = meridian_kit::nats_server::free_port();
        let mut command = std::process::Command::new(driver_bin);
        command
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let driver =
            crate::processes::Group::spawn("chromedriver", command).expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = crate::eventually(Duration::from_secs(20), || async {
            let r = http.get(format!("{url}/status")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        assert!(ready.is_some(), "chromedriver did not start");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // No crash reporter: it starts in a session of its own
                // and would outlive the browser's process group.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-crash-reporter", "--disable-breakpad", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    format!("--window-size={width},{height}")],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a chromium session");
        Self {
            client,
            _driver: driver,
        }
    }

    /// Waits (up to 30 s, polling the page) until `css` matches an element
    /// whose text contains `text`; fails showing the page's message and
    /// main content otherwise.
    pub async fn wait_text(&self, css: &str, text: &str) {
        let found = crate::eventually(Duration::from_secs(30), || async {
            for el in self.client.find_all(Locator::Css(css)).await.ok()? {
                if el.text().await.ok()?.contains(text) {
                    return Some(());
                }
            }
            None
        })
        .await;
        if found.is_none() {
            let message = self.text("#message").await;
            let main = self.text("main").await;
            panic!("no {css} with {text:?}; message {message:?}; page: {main}");
        }
    }

    /// The text of the first element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Clicks the first element matching `css`. A page that redraws its
    /// list (the agents page does every 2 s) can replace the element
    /// between finding and clicking it: then the new one is clicked.
    pub async fn click(&self, css: &str) {
        for attempt in 0.. {
            let clicked = self
                .client
                .wait()
                .at_most(Duration::from_secs(30))
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
                .click()
                .await;
            match clicked {
                Ok(()) => return,
                Err(e) if attempt < 5 && e.to_string().contains("stale element") => continue,
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    /// Types `text` into the field matching `css` (after clearing it). A
    /// field a page redraw replaced between finding and typing (stale) is
    /// found again.
    pub async fn fill(&self, css: &str, text: &str) {
        for _ in 0..5 {
            let el = self
                .client
                .wait()
                .at_most(Duration::from_secs(30))
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match el.clear().await {
                Ok(()) => {}
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
                {
                    continue;
                }
                Err(e) => panic!("{css}: clear: {e}"),
            }
            match el.send_keys(text).await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(e))
                    if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("{css}: typing: {e}"),
            }
        }
        panic!("{css}: replaced by every redraw, five times");
    }

    /// Types `text` into the field matching `css`, then Enter: the field
    /// may be replaced by what the Enter does before the browser has
    /// answered the key press (a stale element then is the expected end).
    pub async fn fill_and_enter(&self, css: &str, text: &str) {
        self.fill(css, text).await;
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match el.send_keys("\u{E007}").await {
            Ok(()) => {}
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("{css}: Enter: {e}"),
        }
    }

    /// No markup from data became an element: no `img` with `src=x` in
    /// the page, and no alert open (an alert would make this call fail).
    pub async fn no_markup_ran(&self) {
        let injected = self
            .client
            .execute(
                "return document.querySelectorAll('img[src=\"x\"]').length",
                vec![],
            )
            .await
            .unwrap_or_else(|e| panic!("the page ran injected markup (an alert is open?): {e}"));
        assert_eq!(
            injected,
            serde_json::json!(0),
            "markup from data became an element"
        );
    }

    /// Goes to `url` (a hash change keeps the page and its session).
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Writes a screenshot of the window to `target/console-screenshots/`.
    pub async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        path
    }
}
