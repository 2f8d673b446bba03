//! Where agent calls may go. An agent URL is a tenant's to write, and the
//! receiver sends it a payload, signatures and trace headers from inside
//! the cluster: without a bound it is a way into whatever the receiver can
//! reach. So:
//!
//! - redirects are never followed (the client's policy; a 3xx is a failed
//!   call, retried and dead-lettered like any other, with its status);
//! - destinations in a deny list are refused before a connection is made,
//!   by default link-local and cloud metadata (`169.254.0.0/16`,
//!   `fd00:ec2::254/128`), extendable with `--agent-deny-cidrs`. It is
//!   checked for literal addresses in the URL and for every address a host
//!   name resolves to (the client's resolver drops denied ones), so DNS
//!   pointing at the metadata address gets nothing either;
//! - the receiver's own listeners (webhook and admin ports on loopback or
//!   their bound address) are refused: an agent must not be able to call
//!   the admin API with the receiver's network position.
//!
//! Loopback and private ranges are allowed by default, because that is
//! where agents live (a Service in the cluster, a sidecar); a platform
//! that wants them refused adds them to the list.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use reqwest::Url;

/// The default deny list: link-local (the cloud metadata address among
/// them) and AWS's IPv6 metadata address.
pub const DEFAULT_DENY: &[&str] = &["169.254.0.0/16", "fd00:ec2::254/128"];

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination denied: {0}")]
pub struct Denied(pub &'static str);

/// The deny list and the receiver's own listeners.
#[derive(Clone, Debug)]
pub struct Destinations {
    deny: Vec<IpNet>,
    own: Vec<SocketAddr>,
}

impl Default for Destinations {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

impl Destinations {
    /// The default deny list plus `extra`, and the receiver's `own` listeners.
    pub fn new(extra: Vec<IpNet>, own: Vec<SocketAddr>) -> Self {
        let mut deny: Vec<IpNet> = DEFAULT_DENY.iter().map(|n| n.parse().expect("a CIDR")).collect();
        deny.extend(extra);
        Self { deny, own }
    }

    /// Is `ip` in the deny list? (IPv4-mapped IPv6 addresses count as IPv4.)
    pub fn denies_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.deny.iter().any(|net| net.contains(&ip))
    }

    /// May a call go to `addr`?
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), Denied> {
        let ip = addr.ip().to_canonical();
        if self.denies_ip(ip) {
            return Err(Denied("the address is in the receiver's deny list"));
        }
        let local = |l: IpAddr| l == ip || ((l.is_unspecified() || l.is_loopback()) && ip.is_loopback());
        if self.own.iter().any(|l| l.port() == addr.port() && local(l.ip())) {
            return Err(Denied("the receiver's own listener"));
        }
        Ok(())
    }

    /// The check of an agent URL before any connection: its scheme, and
    /// its host when that is an address (or `localhost`). Names are checked
    /// again at resolution, by [`Resolver`].
    pub fn check_url(&self, url: &str) -> Result<(), Denied> {
        let url = Url::parse(url).map_err(|_| Denied("not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Denied("only http and https"));
        }
        let port = url.port_or_known_default().ok_or(Denied("no port"))?;
        let host = url.host_str().ok_or(Denied("no host"))?;
        let ip = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) if host.eq_ignore_ascii_case("localhost") => IpAddr::from([127, 0, 0, 1]),
            Err(_) => return Ok(()),
        };
        self.check_addr(SocketAddr::new(ip, port))
    }
}

/// The agent client's resolver: the system's, less denied addresses.
pub struct Resolver(pub Arc<Destinations>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|a| !destinations.denies_ip(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(Denied("every address of the host is in the receiver's deny list"))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`Denied`] somewhere in `error`'s sources, if that is why it failed.
pub fn denied_in(error: &(dyn std::error::Error + 'static)) -> Option<Denied> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(d) = e.downcast_ref::<Denied>() {
            return Some(d.clone());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_link_local_and_own_listeners_are_refused_agents_elsewhere_are_not() {
        let own = vec!["0.0.0.0:8080".parse().unwrap(), "127.0.0.1:8082".parse().unwrap()];
        let d = Destinations::new(vec!["10.96.0.1/32".parse().unwrap()], own);
        let rows = [
            ("http://169.254.169.254/latest/meta-data/", false),
            ("http://169.254.170.2/v2/credentials", false),
            ("http://[fd00:ec2::254]/", false),
            ("http://[::ffff:169.254.169.254]/", false), // IPv4-mapped
            ("https://10.96.0.1/api", false),            // added to the list
            ("http://127.0.0.1:8080/hooks/a/b", false),  // own webhook port
            ("http://localhost:8082/admin/policies", false),
            ("http://127.0.0.1:8082/admin", false),
            ("ftp://agent.example/", false),
            ("http://127.0.0.1:9000/agent", true),      // a sidecar
            ("http://10.1.2.3:8080/agent", true),       // another pod on the same port
            ("http://reviewer.team-a.svc:8080/", true), // checked at resolution
            ("https://agent.example.com/", true),
        ];
        for (url, ok) in rows {
            assert_eq!(d.check_url(url).is_ok(), ok, "{url}");
        }
        assert!(d.denies_ip("169.254.169.254".parse().unwrap()));
        assert!(!d.denies_ip("127.0.0.1".parse().unwrap()), "loopback allowed by default");
        assert!(
            Destinations::default().check_url("http://127.0.0.1:8080/").is_ok(),
            "no own listeners given"
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_denied_addresses_resolves_to_nothing() {
        use reqwest::dns::Resolve;
        let denied = Resolver(Arc::new(Destinations::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            vec![],
        )));
        let error = match denied.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(denied_in(error.as_ref()).is_some(), "{error}");
        let open = Resolver(Arc::new(Destinations::default()));
        let addrs: Vec<SocketAddr> = open.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
