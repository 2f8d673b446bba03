//! Reading Server-Sent Events as a client: the parser (chunks may end
//! anywhere, even inside a character) and [`tail`], which follows a stream
//! and reconnects from the last event it handled. What `hookwarden admin
//! tail` and `hookwarden forward` follow; the server side is
//! [`crate::receiver::admin::stream`].

use std::time::Duration;

use serde_json::Value;

use super::admin_client::CallError;

/// One Server-Sent Event as a client reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Splits a Server-Sent Events byte stream into events, chunk by chunk
/// (a chunk may end anywhere, even inside a line).
#[derive(Default)]
pub struct SseParser {
    /// Bytes of the line so far: a chunk may end inside a character.
    line: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let bytes = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&bytes);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.event = value.to_owned(),
                "id" => self.current.id = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {} // a comment (heartbeat) or a field we do not use
            }
        }
        out
    }
}

/// Follows the event stream at `base` + `path` (`/admin/stream`, or a
/// policy's tap) until `on_event` says stop (returns false), reconnecting
/// after a lost connection from the last event handled, so no delivery is
/// missed or handled twice. `query` is the stream's filter
/// (`policy=...&event=...`). Connection trouble is told to `on_trouble`.
pub async fn tail(
    base: &str,
    path: &str,
    token: &str,
    query: &[(&str, String)],
    mut on_event: impl AsyncFnMut(&SseEvent) -> bool,
    mut on_trouble: impl FnMut(&str),
) -> Result<(), CallError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let mut last_id: Option<String> = None;
    loop {
        let mut request = http.get(&url).query(query).bearer_auth(token);
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let trouble = match request.send().await {
            Ok(mut response) if response.status().is_success() => {
                let mut parser = SseParser::default();
                loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            for event in parser.push(&bytes) {
                                if !on_event(&event).await {
                                    return Ok(());
                                }
                                // NB: after the event is handled: a reconnect resumes after it.
                                if event.id.is_some() {
                                    last_id.clone_from(&event.id);
                                }
                            }
                        }
                        Ok(None) => break "the receiver closed the stream".to_owned(),
                        Err(e) => break format!("the stream broke: {e}"),
                    }
                }
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let message = body["error"].as_str().unwrap_or("no message").to_owned();
                return Err(CallError::Api { status, message });
            }
            Err(e) if last_id.is_none() => {
                return Err(CallError::Unreachable { base: base.to_owned(), cause: e.to_string() });
            }
            Err(e) => format!("cannot reach {base}: {e}"),
        };
        on_trouble(&format!("{trouble}; reconnecting from the last event seen"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_whatever_the_chunks() {
        let text = ": heartbeat\n\nevent: delivery\ndata: {\"title\":\"café ✓\"}\n\nevent: snapshot\ndata: []\n\nevent: delivery\nid: team/a@1-0\ndata: {\"a\":1}\n\nevent: policy\r\ndata: x\r\ndata: y\r\n\r\n";
        let want = vec![
            SseEvent { event: "delivery".into(), data: r#"{"title":"café ✓"}"#.into(), id: None },
            SseEvent { event: "snapshot".into(), data: "[]".into(), id: None },
            SseEvent { event: "delivery".into(), data: r#"{"a":1}"#.into(), id: Some("team/a@1-0".into()) },
            SseEvent { event: "policy".into(), data: "x\ny".into(), id: None },
        ];
        for size in [1, 3, 7, text.len()] {
            // NB: chunks of bytes: some end inside a character.
            let mut parser = SseParser::default();
            let got: Vec<SseEvent> = text.as_bytes().chunks(size).flat_map(|c| parser.push(c)).collect();
            assert_eq!(got, want, "chunks of {size}");
        }
    }
}
