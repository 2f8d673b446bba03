//! Which GitHub API URLs the platform lets WebhookConfigs use.
//!
//! `spec.github.apiUrl` is a tenant's to write, and the operator sends that
//! URL a credential (a token, or an App's JWT, good for every installation
//! of the App), and reads its `/meta` into the receivers' source allowlist.
//! So only URLs the platform team listed (`--github-api-url`) are ever
//! called; any other is refused before a request is made. The default is
//! github.com's alone.
//!
//! An entry is a base URL (`https://ghe.example.com/api/v3`), matched on
//! scheme, host, port and path; `:*` as its port matches any port
//! (`http://127.0.0.1:*`, for a local simulator). Plain `http` is only
//! allowed where an entry says `http`.

use reqwest::Url;

/// GitHub.com's API, the one URL allowed unless the platform says otherwise.
pub const GITHUB_COM: &str = "https://api.github.com";

/// The allowed API URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedApis(Vec<Pattern>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: String,
    /// `None`: any port.
    port: Option<u16>,
    path: String,
}

/// Why an entry of the list is not a base URL.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an API base URL (scheme://host[:port|:*][/path], http or https)")]
pub struct BadPattern(String);

impl AllowedApis {
    /// The list from its entries.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadPattern> {
        entries.iter().map(|e| Pattern::parse(e.as_ref())).collect::<Result<_, _>>().map(Self)
    }

    /// May the operator call `api_url`?
    pub fn allows(&self, api_url: &str) -> bool {
        let Ok(url) = Url::parse(api_url) else { return false };
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return false;
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
        let path = url.path().trim_end_matches('/');
        self.0.iter().any(|p| {
            p.scheme == url.scheme()
                && p.host.eq_ignore_ascii_case(host)
                && p.port.is_none_or(|want| want == port)
                && p.path == path
        })
    }
}

impl Default for AllowedApis {
    fn default() -> Self {
        Self::new(&[GITHUB_COM]).expect("github.com's URL is a base URL")
    }
}

impl Pattern {
    fn parse(entry: &str) -> Result<Self, BadPattern> {
        let bad = || BadPattern(entry.to_owned());
        let trimmed = entry.trim();
        // `:*` is not a port a URL parser takes: note it, parse without it.
        let (text, any_port) = match trimmed.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
                match authority.strip_suffix(":*") {
                    Some(host) => (format!("{scheme}://{host}/{path}"), true),
                    None => (trimmed.to_owned(), false),
                }
            }
            None => return Err(bad()),
        };
        let url = Url::parse(&text).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || !url.username().is_empty() {
            return Err(bad());
        }
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().ok_or_else(bad)?.to_owned(),
            port: if any_port { None } else { Some(url.port_or_known_default().ok_or_else(bad)?) },
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_api_urls_are_allowed() {
        let list = AllowedApis::new(&[
            "https://api.github.com",
            "https://ghe.example.com/api/v3/",
            "http://127.0.0.1:*",
        ])
        .unwrap();
        let rows = [
            ("https://api.github.com", true),
            ("https://api.github.com/", true),
            ("https://API.github.com:443", true),
            ("http://api.github.com", false), // plain http only where listed
            ("https://api.github.com:8443", false),
            ("https://api.github.com.evil.example", false),
            ("https://evil.example/?https://api.github.com", false),
            ("https://user:pw@api.github.com", false),
            ("https://api.github.com/other", false),
            ("https://ghe.example.com/api/v3", true),
            ("https://ghe.example.com/api", false),
            ("https://ghe.example.com/api/v3/x", false),
            ("http://127.0.0.1:4010", true),
            ("http://127.0.0.1", true),
            ("https://127.0.0.1:4010", false),
            ("http://127.0.0.2:4010", false),
            ("http://169.254.169.254", false),
            ("file:///etc/passwd", false),
            ("not a url", false),
        ];
        for (url, want) in rows {
            assert_eq!(list.allows(url), want, "{url}");
        }
        assert!(AllowedApis::default().allows("https://api.github.com"));
        assert!(!AllowedApis::default().allows("http://127.0.0.1:4010"));
        assert!(
            !AllowedApis::new::<&str>(&[]).unwrap().allows("https://api.github.com"),
            "empty allows none"
        );
        for bad in ["api.github.com", "ftp://x", "https://", "https://x?y=1"] {
            assert!(AllowedApis::new(&[bad]).is_err(), "{bad}");
        }
    }
}
