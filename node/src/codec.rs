//! The wire format of rpcudp 5 / kademlia 2.2.3, byte for byte.
//!
//! A datagram is one type byte (`0x00` request, `0x01` response), a 20-byte message id and a
//! msgpack body. Requests are `[name, args]`; a response body is the procedure's return value.
//! The encoder writes what `umsgpack.packb` writes (smallest integer form, float64, str for
//! text, bin for bytes, arrays for tuples); the decoder reads any valid msgpack, checks every
//! length against the bytes that are really there before allocating, limits nesting, and
//! reports the byte offset or the field that was wrong.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rmpv::Value as Msgpack;

use crate::id::{NodeId, ID_LEN};

/// Type byte of a request datagram.
pub const REQUEST: u8 = 0x00;
/// Type byte of a response datagram.
pub const RESPONSE: u8 = 0x01;
/// Length of the message id that a response echoes.
pub const MESSAGE_ID_LEN: usize = 20;
/// rpcudp ignores anything shorter: type byte, message id and at least one body byte.
pub const MIN_DATAGRAM_LEN: usize = 1 + MESSAGE_ID_LEN + 1;
/// The Python sender refuses request bodies larger than this; so do we.
pub const MAX_REQUEST_BODY: usize = 8192;
/// Deepest msgpack nesting accepted; the protocol itself never nests deeper than 3.
pub const MAX_DEPTH: usize = 32;

/// A message id: 20 random bytes chosen by the caller.
pub type MessageId = [u8; MESSAGE_ID_LEN];

/// A value that can be stored in the DHT: the msgpack native types Python's `set` accepts.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    /// An integer above `i64::MAX`: Python stores ints up to `u64::MAX`, so a peer must too.
    /// Decoding puts every integer that fits an i64 in [`Value::Int`].
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
}

impl Value {
    /// The type name used on the CLI and in JSON output.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) | Value::UInt(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
        }
    }

    /// Size in bytes of the payload, for storage limits.
    pub fn payload_len(&self) -> usize {
        match self {
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => 8,
            Value::Bool(_) => 1,
            Value::Str(text) => text.len(),
            Value::Bytes(bytes) => bytes.len(),
        }
    }
}

/// A node as it travels in `find_node` answers: `[id, ip, port]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Contact {
    pub id: NodeId,
    pub addr: PeerAddr,
}

/// A peer's UDP address as `find_node` answers carry it, an IP and a port, in 18 bytes where a
/// [`SocketAddr`] takes 32 (an IPv6 one holds a flow label and scope id the protocol never
/// carries): the routing table and every lookup's candidates hold one per contact, and memory
/// per node is what the benchmarks count.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// IPv4 in its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`): one layout for both families, and
    /// an IPv4 peer seen through a dual-stack socket is the same address, as the transport
    /// already treats it.
    ip: [u8; 16],
    port: u16,
}

impl PeerAddr {
    pub fn new(ip: IpAddr, port: u16) -> PeerAddr {
        let ip = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        PeerAddr { ip: ip.octets(), port }
    }

    /// The IP address: IPv4 for an IPv4-mapped one.
    pub fn ip(&self) -> IpAddr {
        Ipv6Addr::from(self.ip).to_canonical()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// This address with another port.
    pub fn with_port(self, port: u16) -> PeerAddr {
        PeerAddr { port, ..self }
    }

    /// Whether the IP is a loopback one (127.0.0.0/8, or ::1), read from the bytes: the
    /// routing table asks it of every contact of a bucket each time it adds one.
    pub fn is_loopback(&self) -> bool {
        const IPV4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        (self.ip[..12] == IPV4_MAPPED_PREFIX && self.ip[12] == 127)
            || self.ip == Ipv6Addr::LOCALHOST.octets()
    }

    /// The address to send to: IPv4 for an IPv4-mapped IP, otherwise IPv6 with flow label and
    /// scope id 0.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }
}

impl From<SocketAddr> for PeerAddr {
    /// Drops an IPv6 address's flow label and scope id.
    fn from(addr: SocketAddr) -> PeerAddr {
        PeerAddr::new(addr.ip(), addr.port())
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerAddr({})", self.socket_addr())
    }
}

/// A request as the receiver sees it. `sender` is the node id the caller claims.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Stun,
    Ping {
        sender: NodeId,
    },
    Store {
        sender: NodeId,
        key: NodeId,
        value: Value,
    },
    FindNode {
        sender: NodeId,
        key: NodeId,
    },
    FindValue {
        sender: NodeId,
        key: NodeId,
    },
    /// A procedure that Python nodes do not know; kadscale-only names land here.
    Extension {
        name: String,
        args: Vec<Msgpack>,
    },
}

impl Request {
    /// The procedure name on the wire.
    pub fn method(&self) -> &str {
        match self {
            Request::Stun => "stun",
            Request::Ping { .. } => "ping",
            Request::Store { .. } => "store",
            Request::FindNode { .. } => "find_node",
            Request::FindValue { .. } => "find_value",
            Request::Extension { name, .. } => name,
        }
    }

    /// The node id the caller claims, for procedures that carry one.
    pub fn sender(&self) -> Option<NodeId> {
        match self {
            Request::Ping { sender }
            | Request::Store { sender, .. }
            | Request::FindNode { sender, .. }
            | Request::FindValue { sender, .. } => Some(*sender),
            Request::Stun | Request::Extension { .. } => None,
        }
    }
}

/// A response to encode.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// `stun`: the caller's address as the receiver sees it.
    Stun(SocketAddr),
    /// `ping`: the receiver's id.
    Ping(NodeId),
    /// `store`: always true in Python.
    Stored(bool),
    /// `find_node`, or `find_value` without the value.
    Nodes(Vec<Contact>),
    /// `find_value` hit: `{"value": v}`.
    FoundValue(Value),
    /// An extension's return value.
    Extension(Msgpack),
}

/// What a `find_value` call returned.
#[derive(Clone, Debug, PartialEq)]
pub enum FindValueAnswer {
    Value(Value),
    Nodes(Vec<Contact>),
}

/// A decoded datagram.
#[derive(Clone, Debug, PartialEq)]
pub enum Datagram<'a> {
    Request {
        id: MessageId,
        request: Request,
    },
    /// The body's meaning depends on the call it answers, so it stays bytes here, for that
    /// call's reader (`find_node_answer`, ...).
    Response {
        id: MessageId,
        body: &'a [u8],
    },
}

/// Why bytes are not a valid datagram or body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is shorter than the 22-byte minimum")]
    TooShort(usize),
    #[error("unknown datagram type byte 0x{0:02x} at offset 0")]
    UnknownType(u8),
    #[error("msgpack at byte {offset}: {reason}")]
    Msgpack { offset: usize, reason: String },
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

impl DecodeError {
    fn at(offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError::Msgpack { offset, reason: reason.into() }
    }

    fn field(field: impl Into<String>, reason: impl Into<String>) -> DecodeError {
        DecodeError::Field { field: field.into(), reason: reason.into() }
    }
}

/// Decodes a whole datagram: framing, and for requests the msgpack body and the typed
/// procedure.
pub fn decode_datagram(datagram: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    if datagram.len() < MIN_DATAGRAM_LEN {
        return Err(DecodeError::TooShort(datagram.len()));
    }
    let kind = datagram[0];
    if kind != REQUEST && kind != RESPONSE {
        return Err(DecodeError::UnknownType(kind));
    }
    let mut id = [0u8; MESSAGE_ID_LEN];
    id.copy_from_slice(&datagram[1..1 + MESSAGE_ID_LEN]);
    let body_start = 1 + MESSAGE_ID_LEN;
    if kind == REQUEST {
        Ok(Datagram::Request { id, request: request_at(datagram, body_start)? })
    } else {
        Ok(Datagram::Response { id, body: &datagram[body_start..] })
    }
}

/// Decodes one msgpack value that must fill `bytes` exactly.
pub fn decode_msgpack(bytes: &[u8]) -> Result<Msgpack, DecodeError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(0)?;
    reader.finish()?;
    Ok(value)
}

/// Reads `[name, args]` from the body at `start`, each argument of a known procedure straight
/// into its field: one request per datagram, so no msgpack tree is built for them.
fn request_at(bytes: &[u8], start: usize) -> Result<Request, DecodeError> {
    let mut reader = Reader { bytes, pos: start };
    let marker = reader.byte()?;
    if Kind::of(marker) != Kind::Array {
        return Err(DecodeError::field(
            "request",
            format!("expected [name, args], got {}", Kind::of(marker)),
        ));
    }
    let parts = reader.array_len_after(marker)?;
    if parts != 2 {
        return Err(DecodeError::field(
            "request",
            format!("expected [name, args], got {parts} elements"),
        ));
    }
    let at = reader.pos;
    let marker = reader.marker_of(Kind::Str, &|| "request name".to_owned())?;
    let name = reader.str_after(marker, at)?;
    let args = reader.array_len(&|| "request args".to_owned())?;
    let arity = |expected: usize| {
        if args == expected {
            return Ok(());
        }
        Err(DecodeError::field(
            format!("{name} args"),
            format!("expected {expected} arguments, got {args}"),
        ))
    };
    let sender = || format!("{name} node_id");
    let key = || format!("{name} key");
    let request = match name {
        "stun" => {
            arity(0)?;
            Request::Stun
        }
        "ping" => {
            arity(1)?;
            Request::Ping { sender: reader.id(&sender)? }
        }
        "store" => {
            arity(3)?;
            let (sender, key) = (reader.id(&sender)?, reader.id(&key)?);
            let value = value_from_msgpack(&reader.value(2)?)
                .map_err(|reason| DecodeError::field(format!("{name} args[2] (value)"), reason))?;
            Request::Store { sender, key, value }
        }
        "find_node" => {
            arity(2)?;
            Request::FindNode { sender: reader.id(&sender)?, key: reader.id(&key)? }
        }
        "find_value" => {
            arity(2)?;
            Request::FindValue { sender: reader.id(&sender)?, key: reader.id(&key)? }
        }
        _ => {
            // Nested in the body and the args array: depth 2.
            let args = (0..args).map(|_| reader.value(2)).collect::<Result<_, _>>()?;
            Request::Extension { name: name.to_owned(), args }
        }
    };
    reader.finish()?;
    Ok(request)
}

/// Converts a msgpack value to a storable [`Value`]; anything else is refused with a reason.
pub fn value_from_msgpack(value: &Msgpack) -> Result<Value, String> {
    match value {
        Msgpack::Integer(n) => match (n.as_i64(), n.as_u64()) {
            (Some(n), _) => Ok(Value::Int(n)),
            (None, Some(n)) => Ok(Value::UInt(n)),
            (None, None) => Err(format!("integer {n} is neither an i64 nor a u64")),
        },
        Msgpack::F64(f) => Ok(Value::Float(*f)),
        Msgpack::F32(f) => Ok(Value::Float(f64::from(*f))),
        Msgpack::Boolean(b) => Ok(Value::Bool(*b)),
        Msgpack::String(text) => text
            .as_str()
            .map(|text| Value::Str(text.to_owned()))
            .ok_or_else(|| "str is not valid UTF-8".to_owned()),
        Msgpack::Binary(bytes) => Ok(Value::Bytes(bytes.clone())),
        other => {
            Err(format!("expected int, float, bool, str or bin, got {}", Kind::of_value(other)))
        }
    }
}

/// Reads a `ping` answer: the peer's id.
pub fn ping_answer(body: &[u8]) -> Result<NodeId, DecodeError> {
    let mut reader = Reader { bytes: body, pos: 0 };
    let id = reader.id(&|| "ping answer".to_owned())?;
    reader.finish()?;
    Ok(id)
}

/// Reads a `store` answer: Python returns `true`.
pub fn store_answer(body: &[u8]) -> Result<bool, DecodeError> {
    let body = decode_msgpack(body)?;
    body.as_bool().ok_or_else(|| {
        DecodeError::field("store answer", format!("expected bool, got {}", Kind::of_value(&body)))
    })
}

/// Reads a `stun` answer: `[ip, port]`.
pub fn stun_answer(body: &[u8]) -> Result<SocketAddr, DecodeError> {
    let mut reader = Reader { bytes: body, pos: 0 };
    let field = || "stun answer".to_owned();
    let parts = reader.array_len(&field)?;
    if parts != 2 {
        return Err(DecodeError::field(field(), format!("expected 2 elements, got {parts}")));
    }
    let addr = reader.address(&field)?;
    reader.finish()?;
    Ok(addr.socket_addr())
}

/// Reads a `find_node` answer, `[[id, ip, port], ...]`, straight from its bytes: a lookup
/// reads one per call, and a tree of msgpack values would cost allocations for every field.
pub fn find_node_answer(body: &[u8]) -> Result<Vec<Contact>, DecodeError> {
    let mut reader = Reader { bytes: body, pos: 0 };
    let count = reader.array_len(&|| "find_node answer".to_owned())?;
    let mut contacts = Vec::with_capacity(count);
    for index in 0..count {
        // Named only on error: formatting it for every contact cost more than reading it.
        let field = || format!("find_node answer [{index}]");
        let parts = reader.array_len(&field)?;
        if parts != 3 {
            return Err(DecodeError::field(field(), format!("expected 3 elements, got {parts}")));
        }
        let id = reader.id(&|| format!("{} id", field()))?;
        contacts.push(Contact { id, addr: reader.address(&field)? });
    }
    reader.finish()?;
    Ok(contacts)
}

/// Reads a `find_value` answer: `{"value": v}` or a `find_node` answer.
pub fn find_value_answer(body: &[u8]) -> Result<FindValueAnswer, DecodeError> {
    if !matches!(body.first(), Some(&marker) if Kind::of(marker) == Kind::Map) {
        return find_node_answer(body).map(FindValueAnswer::Nodes);
    }
    let body = decode_msgpack(body)?;
    let value = body
        .as_map()
        .and_then(|map| map.iter().find(|(key, _)| key.as_str() == Some("value")))
        .map(|(_, value)| value)
        .ok_or_else(|| DecodeError::field("find_value answer", "map without a \"value\" key"))?;
    value_from_msgpack(value)
        .map(FindValueAnswer::Value)
        .map_err(|reason| DecodeError::field("find_value answer value", reason))
}

/// The msgpack type of a value, read from its marker byte or from the decoded value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Map,
    Array,
    Str,
    Nil,
    Reserved,
    Bool,
    Bin,
    Ext,
    Float,
}

impl Kind {
    /// The kind of a decoded value, for error messages.
    fn of_value(value: &Msgpack) -> Kind {
        match value {
            Msgpack::Nil => Kind::Nil,
            Msgpack::Boolean(_) => Kind::Bool,
            Msgpack::Integer(_) => Kind::Int,
            Msgpack::F32(_) | Msgpack::F64(_) => Kind::Float,
            Msgpack::String(_) => Kind::Str,
            Msgpack::Binary(_) => Kind::Bin,
            Msgpack::Array(_) => Kind::Array,
            Msgpack::Map(_) => Kind::Map,
            Msgpack::Ext(..) => Kind::Ext,
        }
    }

    #[inline]
    fn of(marker: u8) -> Kind {
        match marker {
            0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => Kind::Int,
            0x80..=0x8f | 0xde | 0xdf => Kind::Map,
            0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
            0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
            0xc0 => Kind::Nil,
            0xc1 => Kind::Reserved,
            0xc2 | 0xc3 => Kind::Bool,
            0xc4..=0xc6 => Kind::Bin,
            0xc7..=0xc9 | 0xd4..=0xd8 => Kind::Ext,
            0xca | 0xcb => Kind::Float,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Int => "int",
            Kind::Map => "map",
            Kind::Array => "array",
            Kind::Str => "str",
            Kind::Nil => "nil",
            Kind::Reserved => "reserved marker 0xc1",
            Kind::Bool => "bool",
            Kind::Bin => "bin",
            Kind::Ext => "ext",
            Kind::Float => "float",
        })
    }
}

/// A field name built only when an error needs it.
type FieldName<'f> = &'f dyn Fn() -> String;

/// A bounds-checked msgpack reader over one datagram.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let available = self.bytes.len() - start;
        if len > available {
            return Err(DecodeError::at(
                start,
                format!("needs {len} bytes, only {available} left"),
            ));
        }
        self.pos += len;
        Ok(&self.bytes[start..start + len])
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, width: usize) -> Result<u64, DecodeError> {
        Ok(self.take(width)?.iter().fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)))
    }

    /// A length prefix of `width` bytes, checked against the bytes left (each element of an
    /// array or map takes at least `min_item_size` bytes), so no allocation exceeds the input.
    fn len(&mut self, width: usize, min_item_size: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let len = usize::try_from(self.uint(width)?).unwrap_or(usize::MAX);
        let available = self.bytes.len() - self.pos;
        if len.saturating_mul(min_item_size) > available {
            return Err(DecodeError::at(
                at,
                format!("length {len} exceeds the {available} bytes left"),
            ));
        }
        Ok(len)
    }

    fn value(&mut self, depth: usize) -> Result<Msgpack, DecodeError> {
        let at = self.pos;
        let marker = self.byte()?;
        Ok(match marker {
            0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => Msgpack::Integer(self.int_after(marker)?),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), at, depth)?,
            0x90..=0x9f | 0xdc | 0xdd => {
                let len = self.array_len_after(marker)?;
                self.array(len, at, depth)?
            }
            0xa0..=0xbf | 0xd9..=0xdb => Msgpack::from(self.str_after(marker, at)?),
            0xc0 => Msgpack::Nil,
            0xc1 => return Err(DecodeError::at(at, "reserved marker 0xc1")),
            0xc2 => Msgpack::Boolean(false),
            0xc3 => Msgpack::Boolean(true),
            0xc4..=0xc6 => Msgpack::Binary(self.bin_after(marker)?.to_vec()),
            0xc7..=0xc9 => {
                let len = self.len(1 << (marker - 0xc7), 1)?;
                self.ext(len)?
            }
            0xca => Msgpack::F32(f32::from_bits(self.uint(4)? as u32)),
            0xcb => Msgpack::F64(f64::from_bits(self.uint(8)?)),
            0xd4..=0xd8 => self.ext(1 << (marker - 0xd4))?,
            0xde | 0xdf => {
                let len = self.len(2 << (marker - 0xde), 2)?;
                self.map(len, at, depth)?
            }
        })
    }

    /// Fails unless every byte was read.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            left => Err(DecodeError::at(self.pos, format!("{left} trailing bytes after the body"))),
        }
    }

    /// The next marker, which must start a value of `kind` for `field`.
    fn marker_of(&mut self, kind: Kind, field: FieldName) -> Result<u8, DecodeError> {
        let marker = self.byte()?;
        if Kind::of(marker) != kind {
            return Err(DecodeError::field(
                field(),
                format!("expected {kind}, got {}", Kind::of(marker)),
            ));
        }
        Ok(marker)
    }

    /// The element count of the array `field`.
    fn array_len(&mut self, field: FieldName) -> Result<usize, DecodeError> {
        let marker = self.marker_of(Kind::Array, field)?;
        self.array_len_after(marker)
    }

    /// The node id `field`: a bin of exactly [`ID_LEN`] bytes.
    fn id(&mut self, field: FieldName) -> Result<NodeId, DecodeError> {
        let marker = self.byte()?;
        if Kind::of(marker) != Kind::Bin {
            return Err(DecodeError::field(
                field(),
                format!("expected bin of {ID_LEN} bytes, got {}", Kind::of(marker)),
            ));
        }
        let bytes = self.bin_after(marker)?;
        NodeId::from_slice(bytes).ok_or_else(|| {
            DecodeError::field(field(), format!("expected {ID_LEN} bytes, got {}", bytes.len()))
        })
    }

    /// A contact's or stun answer's address as Python writes it: the IP as its text, then the
    /// port as an int.
    fn address(&mut self, field: FieldName) -> Result<PeerAddr, DecodeError> {
        let ip_field = || format!("{} ip", field());
        let at = self.pos;
        let marker = self.marker_of(Kind::Str, &ip_field)?;
        let text = self.str_bytes_after(marker)?;
        let ip = match parse_ipv4(text) {
            Some(ip) => ip,
            None => utf8(text, at)?
                .parse()
                .map_err(|error| DecodeError::field(ip_field(), format!("{error}")))?,
        };
        let port_field = || format!("{} port", field());
        let marker = self.marker_of(Kind::Int, &port_field)?;
        let port = self.int_after(marker)?;
        let port = port.as_u64().and_then(|port| u16::try_from(port).ok()).ok_or_else(|| {
            DecodeError::field(port_field(), format!("expected a port number, got {port}"))
        })?;
        Ok(PeerAddr::new(ip, port))
    }

    /// The integer after an int marker: unsigned forms as u64, signed ones as i64.
    fn int_after(&mut self, marker: u8) -> Result<rmpv::Integer, DecodeError> {
        Ok(match marker {
            0x00..=0x7f => rmpv::Integer::from(marker),
            0xcc..=0xcf => rmpv::Integer::from(self.uint(1 << (marker - 0xcc))?),
            0xd0..=0xd3 => {
                let width = 1usize << (marker - 0xd0);
                let raw = self.uint(width)?;
                // Sign-extend the big-endian two's complement integer of `width` bytes.
                let shift = 64 - 8 * width as u32;
                rmpv::Integer::from(((raw << shift) as i64) >> shift)
            }
            // The negative fixints, 0xe0..=0xff: the marker is the value.
            _ => rmpv::Integer::from(i64::from(marker as i8)),
        })
    }

    fn array_len_after(&mut self, marker: u8) -> Result<usize, DecodeError> {
        match marker {
            0x90..=0x9f => Ok(usize::from(marker & 0x0f)),
            _ => self.len(2 << (marker - 0xdc), 1),
        }
    }

    fn bin_after(&mut self, marker: u8) -> Result<&'a [u8], DecodeError> {
        let len = self.len(1 << (marker - 0xc4), 1)?;
        self.take(len)
    }

    /// The text after a str marker found at byte `at`.
    fn str_after(&mut self, marker: u8, at: usize) -> Result<&'a str, DecodeError> {
        utf8(self.str_bytes_after(marker)?, at)
    }

    /// The bytes of the str after a str marker, not yet checked to be UTF-8.
    fn str_bytes_after(&mut self, marker: u8) -> Result<&'a [u8], DecodeError> {
        let len = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            _ => self.len(1 << (marker - 0xd9), 1)?,
        };
        self.take(len)
    }

    fn ext(&mut self, len: usize) -> Result<Msgpack, DecodeError> {
        let tag = self.byte()? as i8;
        Ok(Msgpack::Ext(tag, self.take(len)?.to_vec()))
    }

    fn nested(&self, at: usize, depth: usize) -> Result<usize, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::at(at, format!("nesting deeper than {MAX_DEPTH}")));
        }
        Ok(depth + 1)
    }

    fn array(&mut self, len: usize, at: usize, depth: usize) -> Result<Msgpack, DecodeError> {
        let depth = self.nested(at, depth)?;
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(self.value(depth)?);
        }
        Ok(Msgpack::Array(items))
    }

    fn map(&mut self, len: usize, at: usize, depth: usize) -> Result<Msgpack, DecodeError> {
        let depth = self.nested(at, depth)?;
        let mut entries = Vec::with_capacity(len);
        for _ in 0..len {
            let key = self.value(depth)?;
            entries.push((key, self.value(depth)?));
        }
        Ok(Msgpack::Map(entries))
    }
}

/// Writes `request` as a datagram with message id `id`.
pub fn encode_request(id: &MessageId, request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    start_frame(&mut out, REQUEST, id, SMALL_BODY);
    write_array_len(&mut out, 2);
    write_str(&mut out, request.method());
    match request {
        Request::Stun => write_array_len(&mut out, 0),
        Request::Ping { sender } => {
            write_array_len(&mut out, 1);
            write_bin(&mut out, sender.as_bytes());
        }
        Request::Store { sender, key, value } => {
            write_array_len(&mut out, 3);
            write_bin(&mut out, sender.as_bytes());
            write_bin(&mut out, key.as_bytes());
            write_value(&mut out, value);
        }
        Request::FindNode { sender, key } | Request::FindValue { sender, key } => {
            write_array_len(&mut out, 2);
            write_bin(&mut out, sender.as_bytes());
            write_bin(&mut out, key.as_bytes());
        }
        Request::Extension { args, .. } => {
            write_array_len(&mut out, args.len());
            for arg in args {
                write_msgpack(&mut out, arg);
            }
        }
    }
    out
}

/// Writes `response` as a datagram answering message `id`.
pub fn encode_response(id: &MessageId, response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    write_response(&mut out, id, response);
    out
}

/// [`encode_response`] into `out`, replacing what it held: the receive loop writes every
/// answer into one buffer.
pub fn write_response(out: &mut Vec<u8>, id: &MessageId, response: &Response) {
    // Sized once: an answer of k contacts would otherwise grow the buffer three times.
    let body = match response {
        Response::Nodes(contacts) => 5 + contacts.len() * MAX_CONTACT_LEN,
        _ => SMALL_BODY,
    };
    start_frame(out, RESPONSE, id, body);
    match response {
        Response::Stun(addr) => {
            write_array_len(out, 2);
            write_ip(out, addr.ip());
            write_int(out, i128::from(addr.port()));
        }
        Response::Ping(id) => write_bin(out, id.as_bytes()),
        Response::Stored(stored) => write_bool(out, *stored),
        Response::Nodes(contacts) => write_contacts(out, contacts),
        Response::FoundValue(value) => {
            write_map_len(out, 1);
            write_str(out, "value");
            write_value(out, value);
        }
        Response::Extension(body) => write_msgpack(out, body),
    }
}

/// Encodes a response body alone (no framing), as the transport's callers read it.
pub fn encode_msgpack(value: &Msgpack) -> Vec<u8> {
    let mut out = Vec::new();
    write_msgpack(&mut out, value);
    out
}

/// Room for the bodies of most datagrams but find_node answers (requests, pings, stores of
/// small values); larger ones grow the buffer.
const SMALL_BODY: usize = 107;

/// A datagram's type byte and message id, in a buffer with room for `body` more bytes.
fn start_frame(out: &mut Vec<u8>, kind: u8, id: &MessageId, body: usize) {
    out.clear();
    out.reserve(1 + MESSAGE_ID_LEN + body);
    out.push(kind);
    out.extend_from_slice(id);
}

/// Longest encoding of one contact: array marker, id (bin8 of 20), IPv6 text (str8 of at
/// most 45) and port (uint16).
const MAX_CONTACT_LEN: usize = 1 + 22 + 47 + 3;

fn write_contacts(out: &mut Vec<u8>, contacts: &[Contact]) {
    write_array_len(out, contacts.len());
    for contact in contacts {
        // A fixarray of 3, the id's bin8 header and the id, then the address's str, put
        // together on the stack and appended at once: a find_node answer writes twenty, and
        // writing them a field at a time was a tenth of the time spent serving one.
        const TEXT: usize = 3 + ID_LEN + 1;
        let mut head = [0u8; TEXT + MAX_IPV4_TEXT];
        head[..3].copy_from_slice(&[0x93, 0xc4, ID_LEN as u8]);
        head[3..3 + ID_LEN].copy_from_slice(contact.id.as_bytes());
        match contact.addr.ip() {
            IpAddr::V4(v4) => {
                let len = ipv4_text(v4, &mut head[TEXT..]);
                // A fixstr: at most 15 bytes.
                head[TEXT - 1] = 0xa0 | len as u8;
                // All of `head`, then the unused end dropped: a copy of constant length is a
                // few moves, one of variable length a call to memmove.
                out.extend_from_slice(&head);
                out.truncate(out.len() - (MAX_IPV4_TEXT - len));
            }
            ip @ IpAddr::V6(_) => {
                out.extend_from_slice(&head[..TEXT - 1]);
                write_ip(out, ip);
            }
        }
        write_int(out, i128::from(contact.addr.port));
    }
}

/// Longest IPv4 text, "255.255.255.255".
const MAX_IPV4_TEXT: usize = 15;

/// Writes `ip` as the text `str(ip)` gives into `text` (at least [`MAX_IPV4_TEXT`] bytes);
/// returns its length. Digits are written straight: going through `core::fmt` cost a third of
/// each find_node answer.
fn ipv4_text(ip: Ipv4Addr, text: &mut [u8]) -> usize {
    let mut len = 0;
    for (index, octet) in ip.octets().into_iter().enumerate() {
        if index > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// The bytes of the str whose marker is at byte `at`, as text.
fn utf8(bytes: &[u8], at: usize) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes)
        .map_err(|error| DecodeError::at(at, format!("str is not valid UTF-8: {error}")))
}

/// The dotted quad of [`ipv4_text`] read byte by byte, before any UTF-8 check (its general
/// parser was 2% of a join storm's CPU); `None` for anything else, which the caller reads as
/// [`IpAddr::from_str`] does. Agrees with that parser on every dotted quad it takes.
fn parse_ipv4(text: &[u8]) -> Option<IpAddr> {
    let mut octets = [0u8; 4];
    let mut filled = 0;
    // The current octet's value and digit count; a leading zero is only "0" itself.
    let (mut value, mut digits) = (0u16, 0);
    for &byte in text {
        match byte {
            b'0'..=b'9' if digits < 3 && !(digits == 1 && value == 0) => {
                value = value * 10 + u16::from(byte - b'0');
                digits += 1;
            }
            b'.' if digits > 0 && filled < 3 && value <= 255 => {
                octets[filled] = value as u8;
                filled += 1;
                (value, digits) = (0, 0);
            }
            _ => return None,
        }
    }
    if filled == 3 && digits > 0 && value <= 255 {
        octets[3] = value as u8;
        Some(IpAddr::V4(Ipv4Addr::from(octets)))
    } else {
        None
    }
}

/// Writes an address as the str Python's `str(ip)` gives.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; MAX_IPV4_TEXT];
            let len = ipv4_text(v4, &mut text);
            write_raw_str(out, &text[..len]);
        }
        IpAddr::V6(v6) => write_str(out, &v6.to_string()),
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Int(n) => write_int(out, i128::from(*n)),
        Value::UInt(n) => write_int(out, i128::from(*n)),
        Value::Float(f) => write_f64(out, *f),
        Value::Bool(b) => write_bool(out, *b),
        Value::Str(text) => write_str(out, text),
        Value::Bytes(bytes) => write_bin(out, bytes),
    }
}

/// Writes any msgpack value the way umsgpack would.
fn write_msgpack(out: &mut Vec<u8>, value: &Msgpack) {
    match value {
        Msgpack::Nil => out.push(0xc0),
        Msgpack::Boolean(b) => write_bool(out, *b),
        Msgpack::Integer(n) => {
            // Every rmpv integer is an i64 or a u64, so the default is never taken.
            let n = n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            write_int(out, n.unwrap_or_default());
        }
        Msgpack::F32(f) => {
            out.push(0xca);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Msgpack::F64(f) => write_f64(out, *f),
        Msgpack::String(text) => write_raw_str(out, text.as_bytes()),
        Msgpack::Binary(bytes) => write_bin(out, bytes),
        Msgpack::Array(items) => {
            write_array_len(out, items.len());
            for item in items {
                write_msgpack(out, item);
            }
        }
        Msgpack::Map(entries) => {
            write_map_len(out, entries.len());
            for (key, value) in entries {
                write_msgpack(out, key);
                write_msgpack(out, value);
            }
        }
        Msgpack::Ext(tag, data) => write_ext(out, *tag, data),
    }
}

fn write_bool(out: &mut Vec<u8>, value: bool) {
    out.push(if value { 0xc3 } else { 0xc2 });
}

fn write_f64(out: &mut Vec<u8>, value: f64) {
    out.push(0xcb);
    out.extend_from_slice(&value.to_bits().to_be_bytes());
}

/// Smallest encoding, as umsgpack's `_pack_integer`: unsigned forms for n >= 0.
fn write_int(out: &mut Vec<u8>, n: i128) {
    if n >= 0 {
        if n < 128 {
            out.push(n as u8);
        } else if n < 1 << 8 {
            out.push(0xcc);
            out.push(n as u8);
        } else if n < 1 << 16 {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n < 1 << 32 {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    } else if n >= -32 {
        out.push(n as i8 as u8);
    } else if n >= -(1 << 7) {
        out.push(0xd0);
        out.push(n as i8 as u8);
    } else if n >= -(1 << 15) {
        out.push(0xd1);
        out.extend_from_slice(&(n as i16).to_be_bytes());
    } else if n >= -(1 << 31) {
        out.push(0xd2);
        out.extend_from_slice(&(n as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&(n as i64).to_be_bytes());
    }
}

/// Widths of a msgpack length prefix: the fix form (marker base, limit) when there is one,
/// the 8-bit form's marker when there is one, and the 16- and 32-bit forms' markers.
struct LenMarkers {
    fix: Option<(u8, usize)>,
    len8: Option<u8>,
    len16: u8,
    len32: u8,
}

const STR_LEN: LenMarkers =
    LenMarkers { fix: Some((0xa0, 32)), len8: Some(0xd9), len16: 0xda, len32: 0xdb };
const BIN_LEN: LenMarkers = LenMarkers { fix: None, len8: Some(0xc4), len16: 0xc5, len32: 0xc6 };
const ARRAY_LEN: LenMarkers =
    LenMarkers { fix: Some((0x90, 16)), len8: None, len16: 0xdc, len32: 0xdd };
const MAP_LEN: LenMarkers =
    LenMarkers { fix: Some((0x80, 16)), len8: None, len16: 0xde, len32: 0xdf };
const EXT_LEN: LenMarkers = LenMarkers { fix: None, len8: Some(0xc7), len16: 0xc8, len32: 0xc9 };

/// Writes `len` in the smallest form `markers` allow, as umsgpack does.
fn write_len(out: &mut Vec<u8>, len: usize, markers: &LenMarkers) {
    match (markers.fix, markers.len8) {
        (Some((base, limit)), _) if len < limit => out.push(base | len as u8),
        (_, Some(marker)) if len < 1 << 8 => {
            out.push(marker);
            out.push(len as u8);
        }
        _ if len < 1 << 16 => {
            out.push(markers.len16);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(markers.len32);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    write_raw_str(out, text.as_bytes());
}

fn write_raw_str(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len(), &STR_LEN);
    out.extend_from_slice(bytes);
}

fn write_bin(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len(), &BIN_LEN);
    out.extend_from_slice(bytes);
}

fn write_array_len(out: &mut Vec<u8>, len: usize) {
    write_len(out, len, &ARRAY_LEN);
}

fn write_map_len(out: &mut Vec<u8>, len: usize) {
    write_len(out, len, &MAP_LEN);
}

fn write_ext(out: &mut Vec<u8>, tag: i8, data: &[u8]) {
    let fixed = match data.len() {
        1 => Some(0xd4),
        2 => Some(0xd5),
        4 => Some(0xd6),
        8 => Some(0xd7),
        16 => Some(0xd8),
        _ => None,
    };
    match fixed {
        Some(marker) => out.push(marker),
        None => write_len(out, data.len(), &EXT_LEN),
    }
    out.push(tag as u8);
    out.extend_from_slice(data);
}

/// Decodes `datagram` and, when it is valid, checks that re-encoding is stable: the encoding
/// of what was decoded decodes and re-encodes to the same bytes, and every answer reader
/// copes with a response body. Panics when they disagree; that is the property the fuzz
/// target (`node/fuzz`) and the robustness test check on arbitrary input. Returns whether
/// the datagram was valid.
pub fn check_decoder(datagram: &[u8]) -> bool {
    let encoded = match decode_datagram(datagram) {
        Err(_) => return false,
        Ok(Datagram::Request { id, request }) => encode_request(&id, &request),
        Ok(Datagram::Response { id, body }) => {
            // Readers may refuse a body, never panic on it.
            let _ = (ping_answer(body), store_answer(body), stun_answer(body));
            let _ = find_value_answer(body);
            if let Ok(contacts) = find_node_answer(body) {
                let again = encode_response(&id, &Response::Nodes(contacts.clone()));
                assert_eq!(
                    find_node_answer(&again[1 + MESSAGE_ID_LEN..]),
                    Ok(contacts),
                    "contacts do not survive re-encoding"
                );
            }
            match decode_msgpack(body) {
                Ok(tree) => encode_response(&id, &Response::Extension(tree)),
                Err(_) => return false,
            }
        }
    };
    let again = match decode_datagram(&encoded).map(|datagram| match datagram {
        Datagram::Request { id, request } => Ok(encode_request(&id, &request)),
        Datagram::Response { id, body } => {
            decode_msgpack(body).map(|tree| encode_response(&id, &Response::Extension(tree)))
        }
    }) {
        Ok(Ok(again)) => again,
        Ok(Err(error)) | Err(error) => panic!("re-encoded datagram does not decode: {error}"),
    };
    assert_eq!(encoded, again, "re-encoding is not stable");
    true
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use super::*;

    const ID: MessageId = [0xab; MESSAGE_ID_LEN];

    /// A datagram's type byte and message id, for bodies written by hand.
    fn frame(kind: u8, id: &MessageId) -> Vec<u8> {
        let mut out = Vec::new();
        start_frame(&mut out, kind, id, SMALL_BODY);
        out
    }

    fn ids() -> (NodeId, NodeId) {
        let mut a = [0u8; ID_LEN];
        let mut b = [0u8; ID_LEN];
        for i in 0..ID_LEN {
            a[i] = i as u8;
            b[i] = (i + 20) as u8;
        }
        (NodeId(a), NodeId(b))
    }

    fn body(datagram: &[u8]) -> String {
        hex::encode(&datagram[1 + MESSAGE_ID_LEN..])
    }

    fn peer(text: &str) -> PeerAddr {
        text.parse::<SocketAddr>().unwrap().into()
    }

    #[test]
    fn a_contact_is_38_bytes() {
        // An id of 20 and an address of 18, no padding: 52 with a `SocketAddr`.
        assert_eq!(std::mem::size_of::<Contact>(), 38);
    }

    #[test]
    fn peer_addrs_give_back_their_socket_addr() {
        for text in
            ["10.1.2.3:4000", "0.0.0.0:0", "[2001:db8::7]:65535", "[::1]:7000", "127.0.0.9:1"]
        {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(peer(text).socket_addr(), addr, "{text}");
            assert_eq!(peer(text).is_loopback(), addr.ip().is_loopback(), "{text}");
            assert_eq!(peer(text).ip(), addr.ip(), "{text}");
            assert_eq!(peer(text).port(), addr.port(), "{text}");
        }
        // An IPv4 peer seen through a dual-stack socket is the IPv4 address, and gives back
        // `SocketAddr::V4`.
        assert_eq!(peer("[::ffff:10.1.2.3]:4000"), peer("10.1.2.3:4000"));
        assert!(peer("[::ffff:127.0.0.1]:4000").is_loopback());
        assert!(!peer("[::2]:4000").is_loopback() && !peer("128.0.0.1:4000").is_loopback());
        assert_eq!(
            peer("[::ffff:10.1.2.3]:4000").socket_addr(),
            SocketAddr::from(([10, 1, 2, 3], 4000))
        );
        // Flow label and scope id are dropped.
        let scoped = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7000, 5, 2));
        assert_eq!(PeerAddr::from(scoped).socket_addr(), "[::1]:7000".parse().unwrap());
    }

    // Expected bytes below are `umsgpack.packb(...)` output of u-msgpack-python 2.8.0.

    #[test]
    fn requests_encode_like_umsgpack() {
        let (sender, key) = ids();
        let ping = encode_request(&ID, &Request::Ping { sender });
        assert_eq!(ping[0], REQUEST);
        assert_eq!(&ping[1..21], &ID);
        assert_eq!(body(&ping), "92a470696e6791c414000102030405060708090a0b0c0d0e0f10111213");
        let store =
            encode_request(&ID, &Request::Store { sender, key, value: Value::Str("héllo".into()) });
        assert_eq!(
            body(&store),
            "92a573746f726593c414000102030405060708090a0b0c0d0e0f10111213\
             c4141415161718191a1b1c1d1e1f2021222324252627a668c3a96c6c6f"
        );
    }

    #[test]
    fn responses_encode_like_umsgpack() {
        let (id, _) = ids();
        let contact = Contact { id, addr: peer("127.0.0.1:5678") };
        assert_eq!(
            body(&encode_response(&ID, &Response::Nodes(vec![contact]))),
            "9193c414000102030405060708090a0b0c0d0e0f10111213a93132372e302e302e31cd162e"
        );
        assert_eq!(
            body(&encode_response(&ID, &Response::FoundValue(Value::Float(1.5)))),
            "81a576616c7565cb3ff8000000000000"
        );
        assert_eq!(
            body(&encode_response(&ID, &Response::Stun("127.0.0.1:4000".parse().unwrap()))),
            "92a93132372e302e302e31cd0fa0"
        );
        assert_eq!(body(&encode_response(&ID, &Response::Stored(true))), "c3");
    }

    #[test]
    fn an_answer_written_over_a_longer_one_is_exactly_its_own_datagram() {
        let (id, other) = ids();
        let contacts = (0..20u16)
            .map(|port| Contact {
                id,
                addr: SocketAddr::from(([127, 0, 0, 1], 4000 + port)).into(),
            })
            .collect();
        let mut buffer = Vec::new();
        write_response(&mut buffer, &[1; MESSAGE_ID_LEN], &Response::Nodes(contacts));
        write_response(&mut buffer, &ID, &Response::Ping(other));
        assert_eq!(buffer, encode_response(&ID, &Response::Ping(other)));
    }

    #[test]
    fn ipv4_text_matches_display_for_every_digit_count() {
        for octet in [0u8, 7, 9, 10, 42, 99, 100, 109, 110, 199, 200, 255] {
            for ip in [
                Ipv4Addr::new(octet, 0, 255, octet),
                Ipv4Addr::new(1, octet, octet, 10),
                Ipv4Addr::new(255, 255, 255, octet),
            ] {
                let mut written = Vec::new();
                write_ip(&mut written, IpAddr::V4(ip));
                let mut expected = Vec::new();
                write_str(&mut expected, &ip.to_string());
                assert_eq!(written, expected, "{ip}");
            }
        }
        let mut v6 = Vec::new();
        write_ip(&mut v6, "::1".parse().unwrap());
        assert_eq!(v6, b"\xa3::1");
    }

    #[test]
    fn ip_text_is_read_as_the_standard_parser_reads_it() {
        let mut texts: Vec<String> = [0u8, 7, 10, 99, 100, 255]
            .into_iter()
            .map(|octet| Ipv4Addr::new(octet, 1, 255, octet).to_string())
            .collect();
        texts.extend(
            [
                "",
                "1",
                "1.2.3",
                "1.2.3.4.5",
                "1..2.3",
                "1.2.3.",
                "01.2.3.4",
                "1.2.3.00",
                "256.1.1.1",
                "1.2.3.1000",
                "+1.2.3.4",
                " 1.2.3.4",
                "1.2.3.4 ",
                "1.2.3.x",
                "::1",
                "fe80::1",
                "::ffff:1.2.3.4",
                "1.2.3.4:5",
                "١.2.3.4",
            ]
            .map(String::from),
        );
        for text in texts {
            let expected = text.parse::<IpAddr>();
            let parsed = parse_ipv4(text.as_bytes()).map_or_else(|| text.parse(), Ok);
            match (parsed, expected) {
                (Ok(ip), Ok(expected)) => assert_eq!(ip, expected, "{text:?}"),
                (Err(_), Err(_)) => {}
                (got, expected) => panic!("{text:?}: {got:?}, the standard parser {expected:?}"),
            }
        }
    }

    #[test]
    fn integers_use_the_smallest_form() {
        let ints: Vec<Msgpack> = [
            0i128,
            127,
            128,
            255,
            256,
            65535,
            65536,
            (1 << 32) - 1,
            1 << 32,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            -(1 << 31),
            -(1 << 31) - 1,
            i128::from(i64::MAX),
            i128::from(i64::MIN),
        ]
        .into_iter()
        .map(|n| match u64::try_from(n) {
            Ok(n) => Msgpack::from(n),
            Err(_) => Msgpack::from(n as i64),
        })
        .collect();
        let packed = encode_msgpack(&Msgpack::Array(ints.clone()));
        assert_eq!(
            hex::encode(&packed),
            "dc0014007fcc80ccffcd0100cdffffce00010000ceffffffffcf0000000100000000ffe0d0dfd080\
             d1ff7fd18000d2ffff7fffd280000000d3ffffffff7fffffffcf7fffffffffffffffd38000000000000000"
        );
        assert_eq!(decode_msgpack(&packed).unwrap(), Msgpack::Array(ints));
        assert_eq!(
            hex::encode(encode_msgpack(&Msgpack::from("x".repeat(40)))),
            format!("d928{}", "78".repeat(40))
        );
        let sixteen = Msgpack::Array((0..16u64).map(Msgpack::from).collect());
        assert_eq!(hex::encode(encode_msgpack(&sixteen)), "dc0010000102030405060708090a0b0c0d0e0f");
    }

    #[test]
    fn every_request_round_trips() {
        let (sender, key) = ids();
        let requests = vec![
            Request::Stun,
            Request::Ping { sender },
            Request::FindNode { sender, key },
            Request::FindValue { sender, key },
            Request::Store { sender, key, value: Value::Int(-70000) },
            Request::Store { sender, key, value: Value::Float(-0.25) },
            Request::Store { sender, key, value: Value::Bool(false) },
            Request::Store { sender, key, value: Value::Str("x".repeat(300)) },
            Request::Store { sender, key, value: Value::Bytes(vec![7; 70000]) },
            Request::Extension {
                name: "kadscale_load".into(),
                args: vec![Msgpack::Binary(sender.0.to_vec()), Msgpack::Map(vec![]), Msgpack::Nil],
            },
        ];
        for request in requests {
            let bytes = encode_request(&ID, &request);
            assert_eq!(decode_datagram(&bytes), Ok(Datagram::Request { id: ID, request }));
        }
    }

    #[test]
    fn every_response_round_trips_through_its_reader() {
        let (id, other) = ids();
        let contacts = vec![
            Contact { id, addr: peer("127.0.0.1:5678") },
            Contact { id: other, addr: peer("[::1]:7000") },
        ];
        let decode_body = |response: &Response| {
            let datagram = encode_response(&ID, response);
            match decode_datagram(&datagram) {
                Ok(Datagram::Response { id: got, body }) if got == ID => body.to_vec(),
                other => panic!("not a response: {other:?}"),
            }
        };
        assert_eq!(ping_answer(&decode_body(&Response::Ping(id))), Ok(id));
        assert_eq!(store_answer(&decode_body(&Response::Stored(true))), Ok(true));
        let addr: SocketAddr = "10.1.2.3:65535".parse().unwrap();
        assert_eq!(stun_answer(&decode_body(&Response::Stun(addr))), Ok(addr));
        assert_eq!(
            find_node_answer(&decode_body(&Response::Nodes(contacts.clone()))),
            Ok(contacts.clone())
        );
        assert_eq!(
            find_value_answer(&decode_body(&Response::Nodes(contacts.clone()))),
            Ok(FindValueAnswer::Nodes(contacts))
        );
        for value in [
            Value::Int(i64::MAX),
            Value::Float(3.25),
            Value::Bool(true),
            Value::Str("v".into()),
            Value::Bytes(vec![0, 1]),
        ] {
            assert_eq!(
                find_value_answer(&decode_body(&Response::FoundValue(value.clone()))),
                Ok(FindValueAnswer::Value(value))
            );
        }
    }

    #[test]
    fn unknown_procedures_decode_as_extensions() {
        let mut bytes = frame(REQUEST, &ID);
        bytes.extend_from_slice(&encode_msgpack(&Msgpack::Array(vec![
            Msgpack::from("kadscale_load"),
            Msgpack::Array(vec![Msgpack::from(1)]),
        ])));
        match decode_datagram(&bytes) {
            Ok(Datagram::Request { request: Request::Extension { name, args }, .. }) => {
                assert_eq!(name, "kadscale_load");
                assert_eq!(args, vec![Msgpack::from(1)]);
            }
            other => panic!("expected an extension, got {other:?}"),
        }
    }

    fn request_with_body(body: &Msgpack) -> Vec<u8> {
        let mut bytes = frame(REQUEST, &ID);
        bytes.extend_from_slice(&encode_msgpack(body));
        bytes
    }

    #[test]
    fn errors_name_the_offset_or_the_field() {
        assert_eq!(decode_datagram(&[0; 21]), Err(DecodeError::TooShort(21)));
        assert_eq!(decode_datagram(&[7; 30]), Err(DecodeError::UnknownType(7)));
        // A bin32 claiming 4 GiB in 5 bytes, and an array32 claiming 4 G elements in a 26-byte
        // datagram: refused before allocating.
        assert_eq!(
            decode_msgpack(&[0xc6, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Msgpack {
                offset: 1,
                reason: "length 4294967295 exceeds the 0 bytes left".into()
            })
        );
        let mut huge = frame(REQUEST, &ID);
        huge.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        let error = decode_datagram(&huge).unwrap_err();
        assert_eq!(
            error,
            DecodeError::Msgpack {
                offset: 22,
                reason: "length 4294967295 exceeds the 0 bytes left".into()
            }
        );
        let mut truncated = encode_request(&ID, &Request::Ping { sender: NodeId::ZERO });
        truncated.truncate(truncated.len() - 3);
        assert!(
            matches!(decode_datagram(&truncated), Err(DecodeError::Msgpack { offset: 29, .. })),
            "{:?}",
            decode_datagram(&truncated)
        );
        let wrong_id = request_with_body(&Msgpack::Array(vec![
            Msgpack::from("ping"),
            Msgpack::Array(vec![Msgpack::from("not an id")]),
        ]));
        assert_eq!(
            decode_datagram(&wrong_id).unwrap_err().to_string(),
            "ping node_id: expected bin of 20 bytes, got str"
        );
        let wrong_arity = request_with_body(&Msgpack::Array(vec![
            Msgpack::from("find_node"),
            Msgpack::Array(vec![]),
        ]));
        assert_eq!(
            decode_datagram(&wrong_arity).unwrap_err().to_string(),
            "find_node args: expected 2 arguments, got 0"
        );
        let mut trailing = encode_request(&ID, &Request::Stun);
        trailing.push(0xc0);
        assert!(matches!(decode_datagram(&trailing), Err(DecodeError::Msgpack { .. })));
        // An extension whose one argument nests 100 arrays deep.
        let mut deep = frame(REQUEST, &ID);
        deep.extend_from_slice(&[0x92, 0xa1, b'x', 0x91]);
        deep.extend(std::iter::repeat_n(0x91, 100));
        deep.push(0xc0);
        assert!(decode_datagram(&deep).unwrap_err().to_string().contains("nesting deeper than 32"));
    }

    #[test]
    fn answers_with_wrong_shapes_are_refused() {
        let body = |value: Msgpack| encode_msgpack(&value);
        assert!(ping_answer(&body(Msgpack::from(3))).is_err());
        assert_eq!(
            find_node_answer(&body(Msgpack::Array(vec![Msgpack::Array(vec![Msgpack::Nil])])))
                .unwrap_err()
                .to_string(),
            "find_node answer [0]: expected 3 elements, got 1"
        );
        assert_eq!(
            find_node_answer(&body(Msgpack::from("x"))).unwrap_err().to_string(),
            "find_node answer: expected array, got str"
        );
        let contact = |id: Msgpack, ip: Msgpack, port: Msgpack| {
            body(Msgpack::Array(vec![Msgpack::Array(vec![id, ip, port])]))
        };
        let id = || Msgpack::Binary(vec![0; 20]);
        let ip = || Msgpack::from("127.0.0.1");
        for (answer, error) in [
            (
                contact(id(), ip(), Msgpack::from(70000)),
                "find_node answer [0] port: expected a port number, got 70000",
            ),
            (
                contact(id(), ip(), Msgpack::from(-1)),
                "find_node answer [0] port: expected a port number, got -1",
            ),
            (contact(id(), ip(), Msgpack::Nil), "find_node answer [0] port: expected int, got nil"),
            (
                contact(Msgpack::Binary(vec![0; 19]), ip(), Msgpack::from(1)),
                "find_node answer [0] id: expected 20 bytes, got 19",
            ),
            (
                contact(Msgpack::from("id"), ip(), Msgpack::from(1)),
                "find_node answer [0] id: expected bin of 20 bytes, got str",
            ),
            (
                contact(id(), Msgpack::from("localhost"), Msgpack::from(1)),
                "find_node answer [0] ip: invalid IP address syntax",
            ),
        ] {
            assert_eq!(find_node_answer(&answer).unwrap_err().to_string(), error);
        }
        let mut trailing = contact(id(), ip(), Msgpack::from(1));
        assert!(find_node_answer(&trailing).is_ok());
        trailing.push(0xc0);
        assert_eq!(
            find_node_answer(&trailing).unwrap_err().to_string(),
            format!("msgpack at byte {}: 1 trailing bytes after the body", trailing.len() - 1)
        );
        assert!(find_node_answer(&trailing[..trailing.len() - 3]).is_err());
        assert!(find_value_answer(&body(Msgpack::Map(vec![(
            Msgpack::from("other"),
            Msgpack::Nil
        )])))
        .is_err());
        assert!(find_value_answer(&body(Msgpack::Map(vec![(
            Msgpack::from("value"),
            Msgpack::Nil
        )])))
        .is_err());
        assert_eq!(
            stun_answer(&body(Msgpack::Array(vec![Msgpack::from("10.0.0.1")])))
                .unwrap_err()
                .to_string(),
            "stun answer: expected 2 elements, got 1"
        );
    }

    #[test]
    fn contacts_read_straight_from_bytes_match_the_msgpack_tree() {
        // Every integer form a port may take, and both address families.
        let forms = [
            Msgpack::from(80u8),
            Msgpack::from(5678u16),
            Msgpack::Integer(rmpv::Integer::from(5678i64)),
        ];
        for port in forms {
            let answer = Msgpack::Array(vec![
                Msgpack::Array(vec![
                    Msgpack::Binary(vec![7; 20]),
                    Msgpack::from("10.0.0.1"),
                    port.clone(),
                ]),
                Msgpack::Array(vec![
                    Msgpack::Binary(vec![8; 20]),
                    Msgpack::from("::1"),
                    port.clone(),
                ]),
            ]);
            let bytes = encode_msgpack(&answer);
            let port = u16::try_from(port.as_u64().unwrap()).unwrap();
            assert_eq!(
                find_node_answer(&bytes),
                Ok(vec![
                    Contact {
                        id: NodeId([7; 20]),
                        addr: PeerAddr::new([10, 0, 0, 1].into(), port)
                    },
                    Contact {
                        id: NodeId([8; 20]),
                        addr: PeerAddr::new(Ipv6Addr::LOCALHOST.into(), port)
                    },
                ])
            );
        }
    }
}
