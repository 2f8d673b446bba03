//! `hookwarden forward`: a developer's agent on a laptop gets a cluster's real
//! deliveries, with no public URL and no relay in between.
//!
//! It follows a policy's tap on a receiver's admin API (`GET
//! /admin/policies/{ns}/{name}/tap`, reached through `kubectl port-forward`)
//! and POSTs each delivery to a local URL with GitHub's headers, signed again
//! with the local secret (GitHub's own key never leaves the cluster). One at a
//! time, in order: while the local agent is down, the delivery in hand is
//! held and retried, and the tap is not read further, so nothing is skipped;
//! after a lost connection it resumes from the last delivery it handled, so
//! nothing comes twice. An answer other than 2xx is reported and not sent
//! again (what GitHub does). With `--since`, it starts with what the
//! policy's history kept from then on, and goes on live from there.
//!
//! What to send is the pure [`outgoing`]; the loop around it is I/O.

use std::time::Duration;

use super::{admin_client::CallError, sse};
use crate::{ObjectRef, receiver::admin::tap::Tapped, signature};

/// How long a delivery waits before it is offered again to a local agent that is down.
pub const RETRY: Duration = Duration::from_secs(1);

/// What `forward` was asked to do.
pub struct Forward {
    /// The receiver's admin URL and token.
    pub admin: String,
    pub token: String,
    /// The AgentPolicy.
    pub policy: ObjectRef,
    /// The local agent's URL.
    pub to: String,
    /// Only these events (all when empty).
    pub events: Vec<String>,
    /// The local agent's secret: deliveries are signed with it when set.
    pub secret: Option<String>,
    /// Start with the deliveries the policy's history kept from this time
    /// on (Unix milliseconds), then go on live; None: from now.
    pub since_ms: Option<u64>,
}

/// The headers a local agent gets with `d`: GitHub's, signed with `secret`
/// when there is one (SHA-256, and the legacy SHA-1 GitHub still sends).
pub fn outgoing(d: &Tapped, secret: Option<&[u8]>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("user-agent", "GitHub-Hookshot/hookwarden-forward".to_owned()),
        ("x-github-event", d.event.clone()),
        ("x-github-delivery", d.guid.clone()),
        ("x-hookwarden-hook", d.hook.clone()),
    ];
    if let Some(key) = secret {
        headers.push((signature::HEADER, signature::sign(key, d.payload.as_bytes())));
        headers.push(("x-hub-signature", signature::sign_sha1(key, d.payload.as_bytes())));
    }
    headers
}

/// What a delivery was, for one line of output: `push`, `pull_request.opened`.
fn describe(d: &Tapped) -> String {
    let what = match &d.action {
        Some(action) => format!("{}.{action}", d.event),
        None => d.event.clone(),
    };
    format!("{what} {} ({})", d.guid, d.repository.as_deref().unwrap_or("-"))
}

impl Forward {
    /// Forwards until the process is stopped (or the API refuses the
    /// request: wrong token, unknown policy). `say` gets a line per delivery
    /// and per change of the local agent's health.
    pub async fn run(&self, mut say: impl FnMut(&str)) -> Result<(), CallError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("a client");
        let secret = self.secret.as_deref().map(str::as_bytes);
        let path = format!("/admin/policies/{}/{}/tap", self.policy.namespace, self.policy.name);
        say(&format!("forwarding {}'s deliveries to {}", self.policy, self.to));
        let mut say_trouble = |text: &str| eprintln!("{text}");
        let mut down = false;
        let on_event = async |event: &sse::SseEvent| {
            match event.event.as_str() {
                "gap" => {
                    let message: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                    say(&format!("warning: {}", message["message"].as_str().unwrap_or(&event.data)));
                }
                "delivery" => {
                    let d: Tapped = match serde_json::from_str(&event.data) {
                        Ok(d) => d,
                        Err(e) => {
                            say(&format!("warning: a delivery the tap sent is unreadable ({e}); skipped"));
                            return true;
                        }
                    };
                    if !self.events.is_empty() && !self.events.contains(&d.event) {
                        return true;
                    }
                    loop {
                        let mut request = http.post(&self.to).body(d.payload.clone());
                        for (name, value) in outgoing(&d, secret) {
                            request = request.header(name, value);
                        }
                        match request.send().await {
                            Ok(answer) => {
                                if down {
                                    say(&format!("the local agent at {} is back", self.to));
                                    down = false;
                                }
                                let status = answer.status();
                                if status.is_success() {
                                    say(&format!("{} {}", status.as_u16(), describe(&d)));
                                } else {
                                    say(&format!(
                                        "{} {}: the local agent refused it; not sent again",
                                        status.as_u16(),
                                        describe(&d)
                                    ));
                                }
                                break;
                            }
                            Err(e) => {
                                if !down {
                                    // NB: the innermost cause says it: "Connection refused (os error 111)".
                                    let mut cause: &dyn std::error::Error = &e;
                                    while let Some(inner) = cause.source() {
                                        cause = inner;
                                    }
                                    say(&format!(
                                        "the local agent at {} is down ({cause}); holding {} and trying again every {}s",
                                        self.to,
                                        d.guid,
                                        RETRY.as_secs()
                                    ));
                                    down = true;
                                }
                                tokio::time::sleep(RETRY).await;
                            }
                        }
                    }
                }
                _ => {}
            }
            true
        };
        let query: Vec<(&str, String)> =
            self.since_ms.map(|ms| ("sinceMs", ms.to_string())).into_iter().collect();
        sse::tail(&self.admin, &path, &self.token, &query, on_event, &mut say_trouble).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tapped() -> Tapped {
        Tapped {
            guid: "0f1e".into(),
            event: "pull_request".into(),
            hook: "team/hook".into(),
            repository: Some("octo/app".into()),
            action: Some("opened".into()),
            received_ms: 1_700_000_000_000,
            payload: r#"{"action":"opened"}"#.into(),
        }
    }

    #[test]
    fn a_local_agent_gets_githubs_headers_signed_with_its_own_secret() {
        let d = tapped();
        let headers = outgoing(&d, Some(b"local-secret"));
        let get = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("x-github-event"), Some("pull_request"));
        assert_eq!(get("x-github-delivery"), Some("0f1e"));
        assert_eq!(get("content-type"), Some("application/json"));
        let signed = get(signature::HEADER).map(str::as_bytes);
        assert_eq!(signature::verify(signed, d.payload.as_bytes(), &[b"local-secret"]), Ok(0));
        assert!(signature::verify(signed, d.payload.as_bytes(), &[b"githubs-secret"]).is_err());
        assert!(get("x-hub-signature").is_some_and(|v| v.starts_with("sha1=")));

        let unsigned = outgoing(&d, None);
        assert!(unsigned.iter().all(|(n, _)| !n.starts_with("x-hub-signature")), "no secret, no signature");
    }

    #[test]
    fn a_line_says_what_a_delivery_was() {
        assert_eq!(describe(&tapped()), "pull_request.opened 0f1e (octo/app)");
        let push = Tapped { event: "push".into(), action: None, repository: None, ..tapped() };
        assert_eq!(describe(&push), "push 0f1e (-)");
    }
}
