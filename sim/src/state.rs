//! The simulator's world: owners, hooks, deliveries, tokens, Apps, budgets,
//! and the clock it stamps them with.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::Value;

use crate::faults::Faults;

/// Who owns a hook.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// `owner/name`
    Repo(String),
    Org(String),
    /// A GitHub App's own webhook (one per App, id of the App).
    App(u64),
}

impl Owner {
    /// The path of the owner's hooks (an App has one, no list).
    pub(crate) fn hooks_path(&self) -> String {
        match self {
            Self::Repo(r) => format!("repos/{r}/hooks"),
            Self::Org(o) => format!("orgs/{o}/hooks"),
            Self::App(_) => "app/hook".to_owned(),
        }
    }

    /// The path of hook `id`: `repos/{r}/hooks/{id}`, `orgs/{o}/hooks/{id}`,
    /// or an App's `app/hook`.
    pub(crate) fn hook_path(&self, id: u64) -> String {
        match self {
            Self::App(_) => self.hooks_path(),
            _ => format!("{}/{id}", self.hooks_path()),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Hook {
    pub(crate) id: u64,
    pub(crate) owner: Owner,
    pub(crate) active: bool,
    pub(crate) events: Vec<String>,
    pub(crate) url: String,
    pub(crate) content_type: String,
    pub(crate) insecure_ssl: String,
    pub(crate) secret: Option<String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) last_response: Value,
}

/// One delivery attempt, as GitHub records it.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    pub id: u64,
    pub guid: String,
    pub delivered_at: String,
    pub redelivery: bool,
    pub duration: f64,
    pub status: String,
    pub status_code: u16,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<u64>,
    pub repository_id: Option<u64>,
    pub throttled_at: Option<String>,
    #[serde(skip)]
    pub(crate) hook_id: u64,
    #[serde(skip)]
    pub(crate) at: Instant,
    #[serde(skip)]
    pub(crate) payload: Value,
}

/// A request the simulator served on the GitHub API (not `/_sim/`), for
/// checking what a client sent against GitHub's OpenAPI description.
#[derive(Clone, Debug, Serialize)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: Option<Value>,
    pub status: u16,
    pub response: Option<Value>,
}

/// What a token may do: a personal access token everything, an App
/// installation token the hooks of its account until it expires.
#[derive(Clone, Debug, Default)]
pub(crate) struct Grant {
    /// Unix seconds.
    pub(crate) expires: Option<u64>,
    /// The user or organization of an installation.
    pub(crate) account: Option<String>,
}

impl Grant {
    pub(crate) fn valid(&self) -> bool {
        self.expires.is_none_or(|e| now_secs() < e)
    }

    pub(crate) fn sees(&self, owner: &Owner) -> bool {
        let login = match owner {
            Owner::Repo(r) => r.split('/').next().unwrap_or_default(),
            Owner::Org(o) => o,
            Owner::App(_) => return false,
        };
        self.account.as_deref().is_none_or(|a| a.eq_ignore_ascii_case(login))
    }
}

/// A GitHub App: its public key, installations (id → account login) and
/// the id of its own webhook in `hooks`.
pub(crate) struct App {
    pub(crate) public_key: jsonwebtoken::DecodingKey,
    pub(crate) installations: HashMap<u64, String>,
    pub(crate) hook_id: u64,
}

#[derive(Default)]
pub(crate) struct Budget {
    pub(crate) used: u32,
    pub(crate) window_start: u64,
    pub(crate) mutations: VecDeque<Instant>,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) hooks: BTreeMap<u64, Hook>,
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) repos: HashMap<String, u64>,
    pub(crate) orgs: HashMap<String, u64>,
    pub(crate) tokens: HashMap<String, Grant>,
    pub(crate) apps: HashMap<u64, App>,
    pub(crate) budgets: HashMap<String, Budget>,
    pub(crate) next_id: u64,
    pub(crate) requests: Vec<Recorded>,
    pub(crate) faults: Faults,
    /// Hook URLs starting with one of these cannot be reached: deliveries
    /// fail as GitHub's do when the host refuses (a broken Ingress, DNS).
    pub(crate) unreachable: Vec<String>,
    /// The `hooks` ranges `GET /meta` lists (`None`: GitHub's own).
    pub(crate) meta_hooks: Option<Vec<String>>,
}

/// The addresses github.com's hooks come from, as its `GET /meta` listed
/// them when this was written; the simulator serves them until told otherwise.
pub const GITHUB_HOOKS_RANGES: &[&str] = &[
    "192.30.252.0/22",
    "185.199.108.0/22",
    "140.82.112.0/20",
    "143.55.64.0/20",
    "2a0a:a440::/29",
    "2606:50c0::/32",
];

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `secs` (Unix) as GitHub writes times: RFC 3339 in UTC, whole seconds.
pub(crate) fn rfc3339(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64).unwrap_or_default().to_string()
}

pub(crate) fn timestamp() -> String {
    rfc3339(now_secs())
}

pub(crate) fn guid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_github_writes_them() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
