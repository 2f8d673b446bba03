//! The connection to Redis: one server (`redis://`, `rediss://`), or the
//! master that a set of Sentinels names, followed across failovers:
//!
//! `redis+sentinel://[:password@]host:port[,host:port...]/master-name`
//!
//! (the password, if any, is the data nodes'; the Sentinels are asked
//! without one). Every second the Sentinels are asked for the master's
//! address; when it changes, new commands go to the new master.

use std::{
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use redis::aio::ConnectionManager;

/// How often the Sentinels are asked where the master is.
const SENTINEL_POLL: Duration = Duration::from_secs(1);
const SCHEME: &str = "redis+sentinel://";

/// Where Redis is, from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Server(String),
    Sentinel { sentinels: Vec<String>, master: String, password: Option<String> },
}

impl Target {
    pub fn parse(url: &str) -> redis::RedisResult<Self> {
        let invalid =
            |what: &'static str| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what));
        let Some(rest) = url.strip_prefix(SCHEME) else { return Ok(Self::Server(url.to_owned())) };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, master) =
            rest.split_once('/').ok_or_else(|| invalid("redis+sentinel:// needs /master-name"))?;
        let sentinels: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if sentinels.is_empty() || master.is_empty() {
            return Err(invalid("redis+sentinel:// needs host:port[,host:port...]/master-name"));
        }
        let password =
            auth.map(|a| a.rsplit_once(':').map_or(a, |(_, p)| p).to_owned()).filter(|p| !p.is_empty());
        Ok(Self::Sentinel { sentinels, master: master.trim_end_matches('/').to_owned(), password })
    }
}

/// A connection that follows the master. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    current: Arc<RwLock<(String, ConnectionManager)>>,
}

impl Connection {
    pub async fn open(url: &str) -> redis::RedisResult<Self> {
        match Target::parse(url)? {
            Target::Server(url) => {
                let manager = manager(&url).await?;
                Ok(Self { current: Arc::new(RwLock::new((url, manager))) })
            }
            Target::Sentinel { sentinels, master, password } => {
                let url = master_url(&sentinels, &master, password.as_deref()).await?;
                let manager = manager(&url).await?;
                let current = Arc::new(RwLock::new((url, manager)));
                tokio::spawn(follow(Arc::downgrade(&current), sentinels, master, password));
                Ok(Self { current })
            }
        }
    }

    /// The connection to use now.
    pub fn get(&self) -> ConnectionManager {
        self.current.read().unwrap().1.clone()
    }
}

async fn manager(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config).await
}

/// The master's URL, from the first Sentinel that knows it.
async fn master_url(
    sentinels: &[String],
    master: &str,
    password: Option<&str>,
) -> redis::RedisResult<String> {
    let mut last = None;
    for sentinel in sentinels {
        let ask = async {
            let client = redis::Client::open(format!("redis://{sentinel}/"))?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(addr)
        };
        match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(Ok(Some((host, port)))) => {
                let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
                return Ok(format!("redis://{auth}{host}:{port}/"));
            }
            Ok(Ok(None)) => last = Some(format!("sentinel {sentinel} does not know master {master}")),
            Ok(Err(e)) => last = Some(format!("sentinel {sentinel}: {e}")),
            Err(_) => last = Some(format!("sentinel {sentinel}: timed out")),
        }
    }
    let detail = last.unwrap_or_default();
    Err(redis::RedisError::from((redis::ErrorKind::Io, "no sentinel named the master", detail)))
}

/// Swaps in a connection to the new master whenever the Sentinels name
/// another one; ends with the last [`Connection`].
async fn follow(
    current: Weak<RwLock<(String, ConnectionManager)>>,
    sentinels: Vec<String>,
    master: String,
    password: Option<String>,
) {
    loop {
        tokio::time::sleep(SENTINEL_POLL).await;
        let Some(current) = current.upgrade() else { return };
        let Ok(url) = master_url(&sentinels, &master, password.as_deref()).await else { continue };
        if current.read().unwrap().0 == url {
            continue;
        }
        match manager(&url).await {
            Ok(manager) => {
                tracing::warn!(master = %master, "redis master changed; following it");
                *current.write().unwrap() = (url, manager);
            }
            Err(error) => tracing::warn!(%error, "new redis master not reachable yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases = [
            ("redis://redis:6379", Some(Target::Server("redis://redis:6379".into()))),
            (
                "redis+sentinel://a:26379,b:26379/mymaster",
                Some(Target::Sentinel {
                    sentinels: s(&["a:26379", "b:26379"]),
                    master: "mymaster".into(),
                    password: None,
                }),
            ),
            (
                "redis+sentinel://:pw@a:26379/m",
                Some(Target::Sentinel {
                    sentinels: s(&["a:26379"]),
                    master: "m".into(),
                    password: Some("pw".into()),
                }),
            ),
            ("redis+sentinel://a:26379", None),
            ("redis+sentinel:///m", None),
        ];
        for (url, want) in cases {
            assert_eq!(Target::parse(url).ok(), want, "{url}");
        }
    }
}
