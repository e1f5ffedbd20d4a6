//! Resolving the names of external hosts: a ServiceEntry with `resolution: DNS` (or `NONE`)
//! and no endpoints, and ALLOW_ANY passthrough of the forward proxy (docs/egress.md).
//!
//! One hickory resolver per sidecar, made for the DNS servers of the config
//! (`meshConfig.dnsResolvers`, else `/etc/resolv.conf`) and made again when they change. Its
//! cache keeps each answer for its TTL, so a name is asked again only when its answer expires.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// Why a name gave no address.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// The resolver could not be set up (an unreadable resolv.conf).
    #[error("no DNS resolver: {0}")]
    Setup(String),
    /// The lookup failed or found nothing.
    #[error("resolving {host} failed: {why}")]
    Lookup {
        /// The name asked for.
        host: String,
        /// The resolver's error.
        why: String,
    },
}

/// The sidecar's resolver, rebuilt when the configured servers change.
#[derive(Default)]
pub(crate) struct Resolvers {
    /// The servers the current resolver was made for, and the resolver. Locked only to read
    /// or replace the `Arc`, never across a lookup.
    current: Mutex<Option<(Vec<SocketAddr>, Arc<TokioResolver>)>>,
}

impl Resolvers {
    /// The resolver for `servers` (empty: the system's).
    fn resolver(&self, servers: &[SocketAddr]) -> Result<Arc<TokioResolver>, ResolveError> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| ResolveError::Setup("resolver lock poisoned".into()))?;
        if let Some((for_servers, r)) = current.as_ref() {
            if for_servers == servers {
                return Ok(r.clone());
            }
        }
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolveError::Setup(e.to_string()))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let conn = |mut c: ConnectionConfig| {
                        c.port = s.port();
                        c
                    };
                    NameServerConfig::new(
                        s.ip(),
                        true,
                        vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = Arc::new(
            builder
                .build()
                .map_err(|e| ResolveError::Setup(e.to_string()))?,
        );
        *current = Some((servers.to_vec(), resolver.clone()));
        Ok(resolver)
    }

    /// The addresses of `host` (an IP address is its own answer), from the cache while its
    /// TTL lasts.
    pub(crate) async fn lookup(
        &self,
        servers: &[SocketAddr],
        host: &str,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(vec![ip]);
        }
        let resolver = self.resolver(servers)?;
        // Absolute: a name from a ServiceEntry or a CONNECT target is never searched under the
        // resolver's search domains.
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let found = resolver
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| ResolveError::Lookup {
                host: host.to_owned(),
                why: e.to_string(),
            })?;
        let ips: Vec<IpAddr> = found.iter().collect();
        if ips.is_empty() {
            return Err(ResolveError::Lookup {
                host: host.to_owned(),
                why: "no address".into(),
            });
        }
        Ok(ips)
    }
}
