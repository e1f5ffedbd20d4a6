//! Decide, for one DNS message, what the proxy does with it (pure), and shape what it sends
//! back: answered from the table, forwarded upstream, refused as malformed, or ignored; the
//! reply fitted to the client's transport (truncated, with TC, when it does not fit).

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::table::{DnsTable, Lookup, TTL};

/// The largest UDP reply the proxy sends, and the payload size it advertises in EDNS: the size
/// DNS Flag Day 2020 recommends, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The largest reply without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// How the client reached the proxy; decides the largest reply it can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: at most 512 bytes, or the client's EDNS size (capped at
    /// [`MAX_UDP_PAYLOAD`]).
    Udp,
    /// A length-prefixed message on a stream: up to 65,535 bytes.
    Tcp,
}

impl Transport {
    /// `udp` or `tcp`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this reply, built here: a mesh name's records, or an error (FORMERR, NOTIMP).
    Local(Message),
    /// Not a mesh question: send the query upstream as it is and relay the reply.
    Forward,
    /// Not a query (a response, e.g. a reflected one): send nothing.
    Ignore,
}

/// Decides what to do with `query` (Istio `ServeDNS`): only a single A or AAAA question of
/// class IN about a mesh name is answered locally; any other well-formed query is forwarded.
pub fn answer(table: &DnsTable, query: &Message) -> Answer {
    if query.metadata.message_type != MessageType::Query {
        return Answer::Ignore;
    }
    if query.metadata.op_code != OpCode::Query {
        return Answer::Local(error_reply(query, ResponseCode::NotImp));
    }
    // RFC 9619: a query carries exactly one question; Istio answers only the first.
    let [question] = query.queries.as_slice() else {
        return Answer::Local(error_reply(query, ResponseCode::FormErr));
    };
    if question.query_class() != DNSClass::IN {
        return Answer::Forward;
    }
    let qtype = question.query_type();
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return Answer::Forward;
    }
    let name = question.name();
    let records = match table.lookup(&name.to_ascii()) {
        Lookup::Unknown => return Answer::Forward,
        Lookup::Host(addresses) => address_records(name, addresses, qtype),
        Lookup::Expanded {
            addresses,
            search_labels,
        } => {
            let Some(target) = strip_labels(name, search_labels) else {
                return Answer::Forward;
            };
            let ips = address_records(&target, addresses, qtype);
            if ips.is_empty() {
                // Istio sends the CNAME only together with addresses.
                ips
            } else {
                let cname = Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target)));
                std::iter::once(cname).chain(ips).collect()
            }
        }
    };
    let mut reply = reply_to(query, ResponseCode::NoError);
    // The proxy is the authority for mesh names. No records of the asked type is still NOERROR
    // (istio/istio#31250: NXDOMAIN for AAAA would fail a parallel A lookup).
    reply.metadata.authoritative = true;
    reply.answers = rotate(records, query.metadata.id);
    Answer::Local(reply)
}

/// The reply to a forwarded query when no upstream answered: SERVFAIL (Istio
/// `serverFailure`), also sent when too many queries are already waiting upstream.
pub fn server_failure(query: &Message) -> Message {
    error_reply(query, ResponseCode::ServFail)
}

/// The reply to bytes that do not decode as a DNS message: FORMERR with the query's id, opcode
/// and, when they decode, its questions; `None` when not even the header decodes or the bytes
/// are a response (nothing to answer).
pub fn malformed_reply(bytes: &[u8]) -> Option<Message> {
    let mut decoder = BinDecoder::new(bytes);
    let header = hickory_proto::op::Header::read(&mut decoder).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(header.metadata.id, header.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&header.metadata);
    reply.metadata.response_code = ResponseCode::FormErr;
    if let Ok(queries) = Message::read_queries(&mut decoder, usize::from(header.counts.queries)) {
        reply.queries = queries;
    }
    Some(reply)
}

/// The largest reply `query` may get over `transport`: 65,535 bytes on TCP; on UDP 512
/// without EDNS, else the client's advertised size within 512..=[`MAX_UDP_PAYLOAD`].
pub fn reply_limit(query: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(match &query.edns {
            None => CLASSIC_UDP_PAYLOAD,
            Some(edns) => edns
                .max_payload()
                .clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
        }),
    }
}

/// Encodes `reply` in at most `limit` bytes: whole when it fits; otherwise the authority and
/// additional records go, then answers from the end until it fits, and TC is set so the client
/// asks again over TCP (RFC 1035 §4.1.1, RFC 7766 §5). The OPT record stays.
pub fn encode_within(reply: &Message, limit: usize) -> Result<Vec<u8>, EncodeError> {
    let whole = reply.to_vec().map_err(|e| EncodeError(e.to_string()))?;
    if whole.len() <= limit {
        return Ok(whole);
    }
    let mut cut = reply.clone();
    cut.metadata.truncation = true;
    cut.authorities.clear();
    cut.additionals.clear();
    cut.signature = None;
    loop {
        let bytes = cut.to_vec().map_err(|e| EncodeError(e.to_string()))?;
        if bytes.len() <= limit {
            return Ok(bytes);
        }
        if cut.answers.pop().is_none() {
            return Err(EncodeError(format!(
                "a reply without records takes {} bytes, more than {limit}",
                bytes.len()
            )));
        }
    }
}

/// An upstream's reply (`reply`, already carrying the client's id) as the client of `query`
/// over `transport` gets it: the upstream's bytes as they are when they fit; re-encoded and cut
/// by [`encode_within`] when they do not (Istio `Truncate`); and when a reply too big does not
/// even decode, an empty NOERROR reply with TC set, which sends the client to TCP.
pub fn fit_relayed(
    reply: Vec<u8>,
    query: &Message,
    transport: Transport,
) -> Result<Vec<u8>, EncodeError> {
    let limit = reply_limit(query, transport);
    if reply.len() <= limit {
        return Ok(reply);
    }
    match Message::from_vec(&reply) {
        Ok(message) => encode_within(&message, limit),
        Err(_) => {
            let mut empty = reply_to(query, ResponseCode::NoError);
            empty.metadata.truncation = true;
            encode_within(&empty, limit)
        }
    }
}

/// A reply could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot encode the DNS reply: {0}")]
pub struct EncodeError(String);

/// A reply to `query` with its id, opcode, RD and CD flags and questions, `code`, RA set (the
/// proxy recurses, through its upstreams), and an OPT record when the query had one.
fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&query.metadata);
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        reply.set_edns(edns);
    }
    reply
}

fn error_reply(query: &Message, code: ResponseCode) -> Message {
    reply_to(query, code)
}

/// The A or AAAA records of `addresses` under `owner`.
fn address_records(
    owner: &Name,
    addresses: &super::table::Addresses,
    qtype: RecordType,
) -> Vec<Record> {
    match qtype {
        RecordType::A => addresses
            .v4
            .iter()
            .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(*ip))))
            .collect(),
        RecordType::AAAA => addresses
            .v6
            .iter()
            .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::AAAA(AAAA(*ip))))
            .collect(),
        _ => Vec::new(),
    }
}

/// `name` without its last `labels` labels (the search domain a resolver appended), as an FQDN.
fn strip_labels(name: &Name, labels: usize) -> Option<Name> {
    let keep = usize::from(name.num_labels()).checked_sub(labels)?;
    if keep == 0 {
        return None;
    }
    let mut target = Name::from_labels(name.iter().take(keep)).ok()?;
    target.set_fqdn(true);
    Some(target)
}

/// Spreads clients over a host's addresses, as Istio's `roundRobinResponse` does: the address
/// records are rotated by the query id (pure: the same query gets the same order); a CNAME
/// stays first.
fn rotate(mut records: Vec<Record>, id: u16) -> Vec<Record> {
    let first_address = records
        .iter()
        .position(|r| r.record_type() != RecordType::CNAME)
        .unwrap_or(records.len());
    let addresses = &mut records[first_address..];
    if addresses.len() > 1 {
        let by = usize::from(id) % addresses.len();
        addresses.rotate_left(by);
    }
    records
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use hickory_proto::op::Query;

    use super::*;
    use crate::dns::table::Scope;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table() -> DnsTable {
        DnsTable::new(
            [
                (
                    "db.clinic.svc.cluster.local".to_owned(),
                    vec![ip("240.240.0.1")],
                ),
                (
                    "dual.example.com".to_owned(),
                    vec![ip("240.240.0.2"), ip("2001:db8::2")],
                ),
                ("v6only.example.com".to_owned(), vec![ip("2001:db8::3")]),
                ("*.wild.example".to_owned(), vec![ip("240.240.0.4")]),
                (
                    "many.example.com".to_owned(),
                    (1..=100).map(|i| ip(&format!("240.240.1.{i}"))).collect(),
                ),
            ],
            &Scope::kubernetes("clinic", "svc.cluster.local"),
        )
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn local(a: Answer) -> Message {
        match a {
            Answer::Local(m) => m,
            other => panic!("expected a local answer, got {other:?}"),
        }
    }

    fn rdata(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect()
    }

    #[test]
    fn mesh_name_is_answered_with_id_question_ttl_and_authority() {
        let q = query("db.clinic.svc.cluster.local.", RecordType::A);
        let r = local(answer(&table(), &q));
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert!(r.metadata.recursion_desired);
        assert_eq!(r.queries, q.queries);
        assert_eq!(rdata(&r), ["db.clinic.svc.cluster.local. A 240.240.0.1"]);
        assert!(r
            .answers
            .iter()
            .all(|a| a.ttl == 30 && a.dns_class == DNSClass::IN));
    }

    #[test]
    fn answers_keep_the_question_case() {
        let r = local(answer(&table(), &query("DB.Clinic.", RecordType::A)));
        assert_eq!(rdata(&r), ["DB.Clinic. A 240.240.0.1"]);
        let r = local(answer(&table(), &query("db.", RecordType::A)));
        assert_eq!(rdata(&r), ["db. A 240.240.0.1"]);
    }

    #[test]
    fn families_are_answered_separately_and_a_missing_family_is_noerror_empty() {
        let t = table();
        let r = local(answer(&t, &query("dual.example.com.", RecordType::AAAA)));
        assert_eq!(rdata(&r), ["dual.example.com. AAAA 2001:db8::2"]);
        let r = local(answer(&t, &query("dual.example.com.", RecordType::A)));
        assert_eq!(rdata(&r), ["dual.example.com. A 240.240.0.2"]);
        let r = local(answer(&t, &query("v6only.example.com.", RecordType::A)));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        let r = local(answer(&t, &query("db.clinic.", RecordType::AAAA)));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn search_expansion_is_a_cname_chain() {
        let q = query("db.clinic.clinic.svc.cluster.local.", RecordType::A);
        let r = local(answer(&table(), &q));
        assert_eq!(
            rdata(&r),
            [
                "db.clinic.clinic.svc.cluster.local. CNAME db.clinic.",
                "db.clinic. A 240.240.0.1"
            ]
        );
        // Without an address of the asked family: no CNAME either, NOERROR.
        let q = query("db.clinic.clinic.svc.cluster.local.", RecordType::AAAA);
        let r = local(answer(&table(), &q));
        assert!(r.answers.is_empty());
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn wildcard_answers_under_the_question_name() {
        let r = local(answer(&table(), &query("api.wild.example.", RecordType::A)));
        assert_eq!(rdata(&r), ["api.wild.example. A 240.240.0.4"]);
        let q = query("api.wild.example.clinic.svc.cluster.local.", RecordType::A);
        let r = local(answer(&table(), &q));
        assert_eq!(
            rdata(&r),
            [
                "api.wild.example.clinic.svc.cluster.local. CNAME api.wild.example.",
                "api.wild.example. A 240.240.0.4"
            ]
        );
    }

    #[test]
    fn other_names_types_and_classes_are_forwarded() {
        let t = table();
        assert_eq!(
            answer(&t, &query("example.org.", RecordType::A)),
            Answer::Forward
        );
        assert_eq!(
            answer(&t, &query("db.clinic.svc.cluster.local.", RecordType::MX)),
            Answer::Forward
        );
        assert_eq!(
            answer(&t, &query("db.clinic.svc.cluster.local.", RecordType::TXT)),
            Answer::Forward
        );
        let mut chaos = query("db.clinic.svc.cluster.local.", RecordType::A);
        let mut q = chaos.queries[0].clone();
        q.set_query_class(DNSClass::CH);
        chaos.queries = vec![q];
        assert_eq!(answer(&t, &chaos), Answer::Forward);
        // The second and third search domains are not in the table.
        assert_eq!(
            answer(
                &t,
                &query(
                    "db.clinic.svc.cluster.local.svc.cluster.local.",
                    RecordType::A
                )
            ),
            Answer::Forward
        );
    }

    #[test]
    fn malformed_queries_get_formerr_notimp_or_nothing() {
        let t = table();
        let mut none = query("db.", RecordType::A);
        none.queries.clear();
        let r = local(answer(&t, &none));
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.metadata.id, 4242);

        let mut two = query("db.", RecordType::A);
        two.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        let r = local(answer(&t, &two));
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.queries.len(), 2);

        let mut notify = query("db.", RecordType::A);
        notify.metadata.op_code = OpCode::Notify;
        let r = local(answer(&t, &notify));
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);

        let mut response = query("db.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(answer(&t, &response), Answer::Ignore);
    }

    #[test]
    fn undecodable_bytes_get_formerr_with_id_and_question_or_nothing() {
        let q = query("db.clinic.", RecordType::A);
        let mut bytes = q.to_vec().unwrap();
        // Claim one answer record that is not there.
        bytes[7] = 1;
        assert!(Message::from_vec(&bytes).is_err());
        let r = malformed_reply(&bytes).unwrap();
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.queries, q.queries);

        // A question cut in the middle: FORMERR without a question.
        let cut = &q.to_vec().unwrap()[..16];
        let r = malformed_reply(cut).unwrap();
        assert_eq!(r.metadata.id, 4242);
        assert!(r.queries.is_empty());

        assert_eq!(malformed_reply(&[]), None);
        assert_eq!(malformed_reply(&[1, 2, 3]), None);
        // A response's header: never answered.
        let mut resp = bytes.clone();
        resp[2] |= 0x80;
        assert_eq!(malformed_reply(&resp), None);
    }

    #[test]
    fn edns_queries_get_an_opt_record_and_their_size() {
        let mut q = query("db.", RecordType::A);
        assert_eq!(reply_limit(&q, Transport::Udp), 512);
        assert_eq!(reply_limit(&q, Transport::Tcp), 65535);
        let r = local(answer(&table(), &q));
        assert!(r.edns.is_none());
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        q.set_edns(edns);
        assert_eq!(reply_limit(&q, Transport::Udp), 1232);
        let r = local(answer(&table(), &q));
        assert_eq!(r.edns.as_ref().map(Edns::max_payload), Some(1232));
        let mut small = Edns::new();
        small.set_max_payload(100);
        q.set_edns(small);
        assert_eq!(reply_limit(&q, Transport::Udp), 512);
    }

    #[test]
    fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
        let q = query("many.example.com.", RecordType::A);
        let r = local(answer(&table(), &q));
        assert_eq!(r.answers.len(), 100);
        let whole = encode_within(&r, reply_limit(&q, Transport::Tcp)).unwrap();
        let back = Message::from_vec(&whole).unwrap();
        assert_eq!(back.answers.len(), 100);
        assert!(!back.metadata.truncation);

        let udp = encode_within(&r, reply_limit(&q, Transport::Udp)).unwrap();
        assert!(udp.len() <= 512);
        let back = Message::from_vec(&udp).unwrap();
        assert!(back.metadata.truncation);
        assert!(!back.answers.is_empty() && back.answers.len() < 100);
        assert_eq!(back.metadata.id, 4242);
        assert_eq!(back.queries, q.queries);
    }

    #[test]
    fn relayed_replies_pass_whole_when_they_fit_and_are_cut_when_not() {
        let q = query("big.example.org.", RecordType::A);
        let mut big = reply_to(&q, ResponseCode::NoError);
        for i in 1..=100u8 {
            big.add_answer(Record::from_rdata(
                Name::from_ascii("big.example.org.").unwrap(),
                60,
                RData::A(A::new(192, 0, 2, i)),
            ));
        }
        let bytes = big.to_vec().unwrap();
        // Over TCP, the upstream's bytes unchanged, byte for byte (two trailing bytes that a
        // decode and re-encode would drop show it).
        let mut with_tail = bytes.clone();
        with_tail.extend_from_slice(&[0, 0]);
        assert_eq!(
            fit_relayed(with_tail.clone(), &q, Transport::Tcp).unwrap(),
            with_tail
        );
        // Over UDP without EDNS: cut to 512 bytes, TC set, the first records kept.
        let cut = fit_relayed(bytes.clone(), &q, Transport::Udp).unwrap();
        assert!(cut.len() <= 512);
        let back = Message::from_vec(&cut).unwrap();
        assert!(back.metadata.truncation);
        assert_eq!(back.metadata.id, 4242);
        assert_eq!(back.answers[0].data.to_string(), "192.0.2.1");
        // Too big and undecodable (a record claimed but missing): empty, TC, the question kept.
        let mut broken = bytes;
        broken[11] = 1;
        assert!(Message::from_vec(&broken).is_err());
        let empty = Message::from_vec(&fit_relayed(broken, &q, Transport::Udp).unwrap()).unwrap();
        assert!(empty.metadata.truncation);
        assert!(empty.answers.is_empty());
        assert_eq!(empty.metadata.response_code, ResponseCode::NoError);
        assert_eq!(empty.queries, q.queries);
        assert_eq!(empty.metadata.id, 4242);
    }

    #[test]
    fn address_order_rotates_with_the_query_id() {
        let t = table();
        let mut q = query("many.example.com.", RecordType::A);
        q.metadata.id = 3;
        let r = local(answer(&t, &q));
        assert_eq!(rdata(&r)[0], "many.example.com. A 240.240.1.4");
        q.metadata.id = 100;
        let r = local(answer(&t, &q));
        assert_eq!(rdata(&r)[0], "many.example.com. A 240.240.1.1");
        assert_eq!(r.answers.len(), 100);
    }
}
