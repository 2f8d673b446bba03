//! The connection to Redis: one server (`redis://`, `rediss://`); the
//! master that a set of Sentinels names, followed across failovers:
//!
//! `redis+sentinel://[:password@]host:port[,host:port...]/master-name`
//!
//! (the password, if any, is the data nodes'; the Sentinels are asked
//! without one; every second they are asked for the master's address, and
//! when it changes, new commands go to the new master); or a Redis Cluster:
//!
//! `redis+cluster://[:password@]host:port[,host:port...]`
//!
//! (any of its nodes: the client learns the slot map from them and follows
//! `MOVED`/`ASK` redirects, so a resharding is followed as it happens). Every
//! key the queue touches in one command or script is in one policy's hash
//! slot, so nothing spans slots.

use std::{
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use redis::{
    Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value, aio::ConnectionManager,
    cluster_async::ClusterConnection,
};

/// How often the Sentinels are asked where the master is.
const SENTINEL_POLL: Duration = Duration::from_secs(1);
const SENTINEL: &str = "redis+sentinel://";
const CLUSTER: &str = "redis+cluster://";

/// Where Redis is, from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Server(String),
    Sentinel { sentinels: Vec<String>, master: String, password: Option<String> },
    Cluster { nodes: Vec<String>, password: Option<String> },
}

impl Target {
    pub fn parse(url: &str) -> redis::RedisResult<Self> {
        let invalid =
            |what: &'static str| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what));
        // `[user:password@]hosts`: the hosts and the password.
        let split_auth = |rest: &str| -> (Vec<String>, Option<String>, String) {
            let (auth, rest) = match rest.rsplit_once('@') {
                Some((auth, rest)) => (Some(auth), rest),
                None => (None, rest),
            };
            let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
            let hosts = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
            let password =
                auth.map(|a| a.rsplit_once(':').map_or(a, |(_, p)| p).to_owned()).filter(|p| !p.is_empty());
            (hosts, password, path.trim_end_matches('/').to_owned())
        };
        if let Some(rest) = url.strip_prefix(CLUSTER) {
            let (nodes, password, _) = split_auth(rest);
            if nodes.is_empty() {
                return Err(invalid("redis+cluster:// needs host:port[,host:port...]"));
            }
            return Ok(Self::Cluster { nodes, password });
        }
        let Some(rest) = url.strip_prefix(SENTINEL) else { return Ok(Self::Server(url.to_owned())) };
        if !rest.contains('/') {
            return Err(invalid("redis+sentinel:// needs /master-name"));
        }
        let (sentinels, password, master) = split_auth(rest);
        if sentinels.is_empty() || master.is_empty() {
            return Err(invalid("redis+sentinel:// needs host:port[,host:port...]/master-name"));
        }
        Ok(Self::Sentinel { sentinels, master, password })
    }
}

/// A connection to one server (that may follow a master), or to a cluster.
/// Cheap to clone.
#[derive(Clone)]
pub enum Connection {
    Server(Arc<RwLock<(String, ConnectionManager)>>),
    Cluster(ClusterConnection),
}

impl Connection {
    pub async fn open(url: &str) -> redis::RedisResult<Self> {
        match Target::parse(url)? {
            Target::Server(url) => {
                let manager = manager(&url).await?;
                Ok(Self::Server(Arc::new(RwLock::new((url, manager)))))
            }
            Target::Sentinel { sentinels, master, password } => {
                let url = master_url(&sentinels, &master, password.as_deref()).await?;
                let manager = manager(&url).await?;
                let current = Arc::new(RwLock::new((url, manager)));
                tokio::spawn(follow(Arc::downgrade(&current), sentinels, master, password));
                Ok(Self::Server(current))
            }
            Target::Cluster { nodes, password } => {
                let nodes: Vec<String> = nodes.iter().map(|n| format!("redis://{n}/")).collect();
                let mut builder = redis::cluster::ClusterClient::builder(nodes)
                    .tcp_settings(tcp())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(5))
                    // NB: a resharding answers TRYAGAIN to a script whose keys
                    // are half moved; it is over within moments.
                    .retries(16)
                    .max_retry_wait(500);
                if let Some(password) = password {
                    builder = builder.password(password);
                }
                Ok(Self::Cluster(builder.build()?.get_async_connection().await?))
            }
        }
    }

    /// The connection to use now.
    pub fn get(&self) -> Handle {
        match self {
            Self::Server(current) => Handle::Server(current.read().unwrap().1.clone()),
            Self::Cluster(cluster) => Handle::Cluster(cluster.clone()),
        }
    }
}

/// What commands are sent on.
#[derive(Clone)]
pub enum Handle {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// `TCP_NODELAY`, which redis-rs leaves off: with Nagle's algorithm a
/// command written while an earlier one is unacknowledged waits for Redis'
/// delayed ACK (up to 40-200 ms) whenever Redis has no reply to carry it
/// (see the README's performance section).
fn tcp() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

async fn manager(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url.into_connection_info()?.set_tcp_settings(tcp()))?;
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
            (
                "redis+cluster://a:7000,b:7001,c:7002",
                Some(Target::Cluster { nodes: s(&["a:7000", "b:7001", "c:7002"]), password: None }),
            ),
            (
                "redis+cluster://:pw@a:7000/",
                Some(Target::Cluster { nodes: s(&["a:7000"]), password: Some("pw".into()) }),
            ),
            ("redis+cluster://", None),
        ];
        for (url, want) in cases {
            assert_eq!(Target::parse(url).ok(), want, "{url}");
        }
    }
}
