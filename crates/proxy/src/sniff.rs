//! What host a connection's first bytes ask for: the SNI of a TLS ClientHello or the `Host` of
//! an HTTP/1 request. Pure: the caller peeks the bytes (so a connection that goes on is not
//! consumed) and passes them in. Never panics on any input (proptest below).
//!
//! ClientHello layout: RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2 before it); the `server_name`
//! extension (type 0): RFC 6066 §3.

/// What the first bytes of a connection are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A TLS ClientHello; its SNI when it has one.
    Tls {
        /// The `server_name` (host_name type), lower-cased.
        sni: Option<String>,
    },
    /// An HTTP/1 request; its `Host` header when it has one.
    Http {
        /// The request method.
        method: String,
        /// The `Host` header's host (without port), lower-cased.
        host: Option<String>,
    },
    /// Neither (or a malformed one).
    Other,
    /// Not enough bytes yet to tell.
    Incomplete,
}

impl Sniffed {
    /// The protocol label of a blocked attempt: `tls`, `http` or `tcp`.
    pub(crate) fn protocol(&self) -> &'static str {
        match self {
            Sniffed::Tls { .. } => "tls",
            Sniffed::Http { .. } => "http",
            Sniffed::Other | Sniffed::Incomplete => "tcp",
        }
    }

    /// The host the bytes ask for (SNI or Host).
    pub(crate) fn host(&self) -> Option<&str> {
        match self {
            Sniffed::Tls { sni } => sni.as_deref(),
            Sniffed::Http { host, .. } => host.as_deref(),
            Sniffed::Other | Sniffed::Incomplete => None,
        }
    }
}

/// The longest prefix worth waiting for: a ClientHello with post-quantum key shares is under
/// 2 KiB, an HTTP request head under 16 KiB.
pub(crate) const SNIFF_LIMIT: usize = 16 * 1024;

/// Classify the first bytes of a connection.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    match bytes.first() {
        None => Sniffed::Incomplete,
        Some(0x16) => match client_hello_sni(bytes) {
            Ok(sni) => Sniffed::Tls { sni },
            Err(Parse::Incomplete) if bytes.len() < SNIFF_LIMIT => Sniffed::Incomplete,
            Err(_) => Sniffed::Other,
        },
        Some(b) if b.is_ascii_uppercase() => http_host(bytes),
        Some(_) => Sniffed::Other,
    }
}

/// The `Host` of an HTTP/1 request head.
fn http_host(bytes: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => Sniffed::Http {
            method: req.method.unwrap_or_default().to_owned(),
            host: req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|v| host_of_authority(v.trim())),
        },
        Ok(httparse::Status::Partial) if bytes.len() < SNIFF_LIMIT => Sniffed::Incomplete,
        _ => Sniffed::Other,
    }
}

/// The host part of an authority (`host`, `host:port`, `[v6]:port`), lower-cased.
pub(crate) fn host_of_authority(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    Incomplete,
    Malformed,
}

/// A cursor over bytes that fails instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// What running out means: more bytes may come (`Incomplete`), or a length lied.
    short: fn() -> Parse,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Parse> {
        let end = self.at.checked_add(n).ok_or(Parse::Malformed)?;
        let out = self.bytes.get(self.at..end).ok_or_else(self.short)?;
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<usize, Parse> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, Parse> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Result<usize, Parse> {
        let b = self.take(3)?;
        Ok((usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// The SNI of a ClientHello that starts `bytes`: its handshake message, gathered from as many
/// handshake records as it spans.
fn client_hello_sni(bytes: &[u8]) -> Result<Option<String>, Parse> {
    let mut records = Reader {
        bytes,
        at: 0,
        short: || Parse::Incomplete,
    };
    let mut handshake = Vec::new();
    let mut need = None;
    loop {
        if records.u8()? != 0x16 {
            return Err(Parse::Malformed);
        }
        records.take(2)?;
        let len = records.u16()?;
        handshake.extend_from_slice(records.take(len)?);
        if need.is_none() && handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return Err(Parse::Malformed);
            }
            let n = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            need = Some(4 + n);
        }
        if need.is_some_and(|n| handshake.len() >= n) {
            break;
        }
    }
    let mut r = Reader {
        bytes: &handshake,
        at: 0,
        short: || Parse::Malformed,
    };
    r.take(1)?; // msg_type client_hello
    let len = r.u24()?;
    let mut r = Reader {
        bytes: r.take(len)?,
        at: 0,
        short: || Parse::Malformed,
    };
    r.take(2 + 32)?; // legacy_version, random
    let n = r.u8()?;
    r.take(n)?; // legacy_session_id
    let n = r.u16()?;
    r.take(n)?; // cipher_suites
    let n = r.u8()?;
    r.take(n)?; // legacy_compression_methods
    if r.at == r.bytes.len() {
        return Ok(None); // no extensions
    }
    let n = r.u16()?;
    let mut ext = Reader {
        bytes: r.take(n)?,
        at: 0,
        short: || Parse::Malformed,
    };
    while ext.at < ext.bytes.len() {
        let kind = ext.u16()?;
        let n = ext.u16()?;
        let data = ext.take(n)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader {
            bytes: data,
            at: 0,
            short: || Parse::Malformed,
        };
        let n = list.u16()?;
        let mut names = Reader {
            bytes: list.take(n)?,
            at: 0,
            short: || Parse::Malformed,
        };
        while names.at < names.bytes.len() {
            let name_type = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).map_err(|_| Parse::Malformed)?;
                return Ok(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello made by rustls for `sni`.
    fn client_hello(sni: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            sni.to_owned().try_into().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_real_client_hello_names_its_server() {
        let hello = client_hello("Quay.IO");
        assert_eq!(
            sniff(&hello),
            Sniffed::Tls {
                sni: Some("quay.io".into())
            }
        );
        // Every strict prefix is incomplete, never a wrong answer.
        for cut in 0..hello.len() {
            assert_eq!(sniff(&hello[..cut]), Sniffed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn a_client_hello_split_over_two_records_is_joined() {
        let hello = client_hello("docker.io");
        let body = &hello[5..];
        let (a, b) = body.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            sniff(&split),
            Sniffed::Tls {
                sni: Some("docker.io".into())
            }
        );
    }

    #[test]
    fn http_requests_give_their_host() {
        let cases: &[(&[u8], Sniffed)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: Open-EMR.org:80\r\n\r\n",
                Sniffed::Http {
                    method: "GET".into(),
                    host: Some("open-emr.org".into()),
                },
            ),
            (
                b"GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
                Sniffed::Http {
                    method: "GET".into(),
                    host: Some("::1".into()),
                },
            ),
            (
                b"POST /x HTTP/1.0\r\n\r\n",
                Sniffed::Http {
                    method: "POST".into(),
                    host: None,
                },
            ),
            (b"GET / HTTP/1.1\r\nHost: a", Sniffed::Incomplete),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Sniffed::Other),
            (b"\x00\x01binary", Sniffed::Other),
        ];
        for (bytes, want) in cases {
            assert_eq!(&sniff(bytes), want, "{}", String::from_utf8_lossy(bytes));
        }
    }

    proptest! {
        #[test]
        fn sniffing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = sniff(&bytes);
        }

        #[test]
        fn a_mangled_client_hello_never_panics(flip in 0usize..400, to in any::<u8>()) {
            let mut hello = client_hello("open-emr.org");
            if let Some(b) = hello.get_mut(flip) {
                *b = to;
            }
            let _ = sniff(&hello);
        }
    }
}
