//! Forwarding one query to the upstream resolvers: over the transport the client used, from a
//! fresh socket per query (a random source port and a random id, checked with the question on
//! the way back, so a spoofed or stale datagram is not taken for the answer), carrying the
//! capture's exclusion mark when one is set.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use super::answer::Transport;

/// Why one upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A socket operation failed (refused, unreachable, reset...).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No answer within the per-upstream timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A TCP answer that is not the answer to the query sent.
    #[error("the answer does not match the query (id or question)")]
    Mismatch,
}

/// Sends `query_bytes` (the client's query, `query` decoded) to `upstream` under a fresh id and
/// returns the upstream's reply bytes, with the client's id put back. UDP replies that do not
/// match (id, question) are skipped until one does or `timeout` passes.
pub(super) async fn exchange(
    transport: Transport,
    upstream: SocketAddr,
    query_bytes: &[u8],
    query: &Message,
    mark: Option<u32>,
    timeout: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    let id = fastrand::u16(..);
    let mut out = query_bytes.to_vec();
    set_id(&mut out, id);
    let work = async {
        match transport {
            Transport::Udp => exchange_udp(upstream, &out, id, query, mark).await,
            Transport::Tcp => exchange_tcp(upstream, &out, id, query, mark).await,
        }
    };
    let mut reply = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ExchangeError::Timeout(timeout))??;
    set_id(&mut reply, query.metadata.id);
    Ok(reply)
}

/// Checks that the process may set `mark` on its sockets (Linux needs `CAP_NET_ADMIN`).
pub(super) fn check_mark(mark: u32) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_mark(mark)
}

async fn exchange_udp(
    upstream: SocketAddr,
    out: &[u8],
    id: u16,
    query: &Message,
    mark: Option<u32>,
) -> Result<Vec<u8>, ExchangeError> {
    let socket = udp_socket(upstream, mark)?;
    socket.connect(upstream).await?;
    socket.send(out).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let n = socket.recv(&mut buf).await?;
        let reply = buf.get(..n).unwrap_or_default();
        if answers(reply, id, query) {
            return Ok(reply.to_vec());
        }
        tracing::debug!(%upstream, "DNS: skipped a datagram that does not answer the query");
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    out: &[u8],
    id: u16,
    query: &Message,
    mark: Option<u32>,
) -> Result<Vec<u8>, ExchangeError> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        SockRef::from(&socket).set_mark(mark)?;
    }
    let mut stream = socket.connect(upstream).await?;
    let len = u16::try_from(out.len()).map_err(|_| io::Error::other("query over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(out.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(out);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    if answers(&reply, id, query) {
        Ok(reply)
    } else {
        Err(ExchangeError::Mismatch)
    }
}

/// A fresh UDP socket on an ephemeral port of the upstream's family, with the mark.
fn udp_socket(upstream: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(upstream),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    let any: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(&any.into())?;
    UdpSocket::from_std(socket.into())
}

/// Whether `reply` is a response with `id` to `query`'s questions (names compared without
/// case). Only the header and questions are decoded: the rest is relayed as the upstream sent
/// it.
pub(super) fn answers(reply: &[u8], id: u16, query: &Message) -> bool {
    let mut decoder = BinDecoder::new(reply);
    let Ok(header) = Header::read(&mut decoder) else {
        return false;
    };
    if header.metadata.id != id || header.metadata.message_type != MessageType::Response {
        return false;
    }
    Message::read_queries(&mut decoder, usize::from(header.counts.queries))
        .is_ok_and(|questions| questions == query.queries)
}

/// Writes `id` into the first two bytes of a message (no-op on a shorter buffer).
pub(super) fn set_id(message: &mut [u8], id: u16) {
    if let Some(head) = message.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query(name: &str) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    #[test]
    fn a_reply_must_carry_the_id_and_the_question() {
        let q = query("example.org.");
        let mut reply = Message::response(99, q.metadata.op_code);
        reply.queries = query("EXAMPLE.org.").queries;
        let bytes = reply.to_vec().unwrap();
        assert!(answers(&bytes, 99, &q), "names compare without case");
        assert!(!answers(&bytes, 98, &q), "another id");
        reply.queries = query("example.net.").queries;
        assert!(
            !answers(&reply.to_vec().unwrap(), 99, &q),
            "another question"
        );
        let mut not_response = q.clone();
        not_response.metadata.id = 99;
        assert!(!answers(&not_response.to_vec().unwrap(), 99, &q), "a query");
        assert!(!answers(&[0, 99], 99, &q), "too short");
    }

    #[test]
    fn set_id_rewrites_the_header_only() {
        let mut bytes = query("example.org.").to_vec().unwrap();
        let rest = bytes[2..].to_vec();
        set_id(&mut bytes, 0xBEEF);
        assert_eq!(&bytes[..2], &[0xBE, 0xEF]);
        assert_eq!(&bytes[2..], &rest[..]);
        let mut short = [1u8];
        set_id(&mut short, 5);
        assert_eq!(short, [1]);
    }
}
