//! GitHub's `GET /meta` `hooks` ranges: the addresses its webhook deliveries
//! come from. The operator reads them for each GitHub API URL in use
//! (conditionally, on the last `ETag`) and publishes their union in a
//! ConfigMap; receivers started with `--github-meta-allowlist` refuse any
//! other source with 403.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use reqwest::{StatusCode, header};

use super::Error;
use crate::api::WebhookConfig;

/// Default name of the ConfigMap the ranges are published in (release
/// namespace); the chart names its own and passes it to both components.
pub const DEFAULT_CONFIGMAP: &str = "hookwarden-github-meta";
/// The ConfigMap entry with the ranges, one CIDR a line.
pub const HOOKS_KEY: &str = "hooks";
/// The ConfigMap entry with the API URLs the ranges were read from.
pub const API_URLS_KEY: &str = "apiUrls";

/// A new answer of `GET /meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub hooks: Vec<IpNet>,
    pub etag: Option<String>,
}

/// `GET {api_url}/meta`, conditional on `etag`: `None` when unchanged (304).
/// Entries that are not CIDRs are skipped.
pub async fn fetch(
    http: &reqwest::Client,
    api_url: &str,
    etag: Option<&str>,
) -> Result<Option<Fetched>, Error> {
    let mut req = http
        .get(format!("{}/meta", api_url.trim_end_matches('/')))
        .header(header::ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28");
    if let Some(etag) = etag {
        req = req.header(header::IF_NONE_MATCH, etag);
    }
    let res = req.send().await.map_err(|e| Error::Transport(e.without_url().to_string()))?;
    match res.status() {
        StatusCode::NOT_MODIFIED => Ok(None),
        StatusCode::OK => {
            let etag = res.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = super::read_capped(res, MAX_META_BYTES).await?;
            Ok(Some(Fetched { hooks: parse_meta(&body)?, etag }))
        }
        other => Err(Error::Unexpected { status: other.as_u16() }),
    }
}

/// The GitHub API URLs the WebhookConfigs use.
/// GitHub's `/meta` is about 20 KB; a thousand times that is not an answer.
const MAX_META_BYTES: usize = 1 << 20;

/// The `hooks` ranges of a `/meta` answer; entries that are not CIDRs are skipped.
pub fn parse_meta(body: &[u8]) -> Result<Vec<IpNet>, Error> {
    #[derive(serde::Deserialize)]
    struct Meta {
        hooks: Vec<serde_json::Value>,
    }
    let meta: Meta = serde_json::from_slice(body).map_err(|e| Error::BadAnswer(super::short(e)))?;
    Ok(meta.hooks.iter().filter_map(|h| h.as_str()?.parse().ok()).collect())
}

pub fn api_urls<'a>(hooks: impl IntoIterator<Item = &'a WebhookConfig>) -> BTreeSet<String> {
    // NB: a hook through a GitHubConnection uses the connection's URL.
    hooks
        .into_iter()
        .filter(|w| w.spec.github.connection.is_none())
        .map(|w| w.spec.github.api_url.trim_end_matches('/').to_owned())
        .collect()
}

/// The ConfigMap's data for the ranges known per API URL: their union,
/// sorted, one a line, and the URLs they came from.
pub fn render(known: &BTreeMap<String, Vec<IpNet>>) -> BTreeMap<String, String> {
    let ranges: BTreeSet<IpNet> = known.values().flatten().copied().collect();
    let lines = |items: Vec<String>| items.join("\n");
    BTreeMap::from([
        (HOOKS_KEY.to_owned(), lines(ranges.iter().map(IpNet::to_string).collect())),
        (API_URLS_KEY.to_owned(), lines(known.keys().cloned().collect())),
    ])
}

/// The ranges in a published `hooks` entry (lines that are not CIDRs skipped).
pub fn parse_hooks(text: &str) -> Vec<IpNet> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn publishes_the_sorted_union_of_every_api_urls_ranges() {
        // (ranges per API URL, published hooks, published apiUrls)
        type Case<'a> = (&'a [(&'a str, &'a [&'a str])], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[], "", ""),
            (
                &[("https://api.github.com", &["192.30.252.0/22", "2a0a:a440::/29", "140.82.112.0/20"])],
                "140.82.112.0/20\n192.30.252.0/22\n2a0a:a440::/29",
                "https://api.github.com",
            ),
            (
                &[
                    ("https://ghe.example/api/v3", &["10.0.0.0/8", "140.82.112.0/20"]),
                    ("https://api.github.com", &["140.82.112.0/20"]),
                ],
                "10.0.0.0/8\n140.82.112.0/20",
                "https://api.github.com\nhttps://ghe.example/api/v3",
            ),
        ];
        for (known, hooks, urls) in cases {
            let known: BTreeMap<String, Vec<IpNet>> =
                known.iter().map(|(u, n)| (u.to_string(), nets(n))).collect();
            let data = render(&known);
            assert_eq!((data[HOOKS_KEY].as_str(), data[API_URLS_KEY].as_str()), (*hooks, *urls));
            assert_eq!(parse_hooks(&data[HOOKS_KEY]).len(), hooks.lines().count());
        }
        assert_eq!(parse_hooks("10.0.0.0/8\nnot a range\n\n ::1/128 "), nets(&["10.0.0.0/8", "::1/128"]));
    }
}
