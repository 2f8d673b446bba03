//! A real headless Chromium (Debian's package, installed by `e2e/up`),
//! driven over the DevTools protocol, for the status page's tests.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{WAIT, eventually, tempfile_dir};

/// A real headless Chromium (Debian's package, installed by `e2e/up`),
/// driven over the DevTools protocol.
pub struct Browser {
    child: std::process::Child,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
    _profile: tempfile_dir::Dir,
}

impl Browser {
    /// A browser with one page the size of a phone's screen.
    pub async fn phone() -> Self {
        use std::io::BufRead;
        let profile = tempfile_dir::Dir::new();
        let mut child = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("chromium (e2e/up installs it)");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let endpoint = stderr
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("DevTools listening on ").map(|(_, url)| url.to_owned()))
            .expect("chromium's DevTools endpoint");
        let port = endpoint.trim_start_matches("ws://").split(['/', ':']).nth(1).unwrap().to_owned();
        let pages: serde_json::Value = eventually("chromium's page", WAIT, || async {
            let list: serde_json::Value =
                reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.ok()?.json().await.ok()?;
            list.as_array()?.iter().any(|t| t["type"] == "page").then_some(list)
        })
        .await;
        let page = pages.as_array().unwrap().iter().find(|t| t["type"] == "page").unwrap();
        let (ws, _) =
            tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap()).await.unwrap();
        let mut browser = Self { child, ws, next_id: 0, _profile: profile };
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
            )
            .await;
        browser
    }

    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use futures::{SinkExt, StreamExt};
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tokio_tungstenite::tungstenite::Message::text(message)).await.unwrap();
        loop {
            let message = self.ws.next().await.expect("chromium answers").unwrap();
            let Ok(text) = message.to_text() else { continue };
            let reply: serde_json::Value = serde_json::from_str(text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    pub async fn until(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + WAIT;
        while self.eval(expression).await != json!(true) {
            assert!(Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.until("the page loaded", "document.readyState === 'complete'").await;
    }

    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
