//! A pipelined connection to one Redis server over plain TCP, for the calls of
//! the request path: every caller's commands go into one buffer that a single
//! task writes and whose replies it reads back in order, handing what Redis
//! pushes (RESP3 invalidations and channel messages) to a push sender.
//!
//! It does what the `redis` crate's multiplexed connection does for these
//! calls with a fraction of its work per reply: a command is encoded straight
//! into the shared buffer, and replies are parsed by hand, not by a parser
//! combinator. Connections over TLS or a Unix socket, and those of a Cluster,
//! stay with the `redis` crate.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis::aio::AsyncPushSender;
use redis::{Cmd, ProtocolVersion, PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

/// How deep replies may nest; Redis's own replies to this store's commands
/// nest two deep at most.
const MAX_DEPTH: usize = 32;

/// What a connection is opened with.
pub(super) struct PipeConfig<'a> {
    pub(super) host: &'a str,
    pub(super) port: u16,
    pub(super) username: Option<&'a str>,
    pub(super) password: Option<&'a str>,
    pub(super) db: i64,
    pub(super) protocol: ProtocolVersion,
    /// For the connect and for each reply.
    pub(super) timeout: Duration,
    /// Told of every push, and of the connection's loss
    /// ([`PushKind::Disconnection`]).
    pub(super) pushes: Option<Arc<dyn AsyncPushSender>>,
}

/// A handle on a connection; clones share it. The connection closes when the
/// last handle is dropped, when Redis or the network ends it, when its task's
/// runtime ends, or when a reply cannot be parsed.
#[derive(Clone)]
pub(super) struct Pipe {
    owner: Arc<Owner>,
    timeout: Duration,
    db: i64,
}

/// Closes the connection when the last handle goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0
            .close(io::ErrorKind::ConnectionAborted, "connection dropped");
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the connection's task: bytes to write, or closing.
    wake: Notify,
    stream: TcpStream,
    /// The thread the task runs on (one runtime per worker thread).
    home: std::thread::ThreadId,
}

#[derive(Default)]
struct State {
    /// Encoded commands not yet written.
    out: Vec<u8>,
    /// The calls written or to be written, in order, each waiting for its
    /// replies.
    waiting: VecDeque<Waiting>,
    /// Why the connection closed; no call is taken after.
    closed: Option<(io::ErrorKind, &'static str)>,
    /// The task is writing bytes it took from `out`.
    writing: bool,
}

struct Waiting {
    /// Replies still to come, of which the first `skip` are dropped.
    left: usize,
    skip: usize,
    /// Whether its commands are subscriptions, whose replies are pushes.
    subscribe: bool,
    got: Vec<Value>,
    done: oneshot::Sender<RedisResult<Vec<Value>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves only whole values behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection: every call waiting fails with `kind`, and no
    /// other is taken.
    fn close(&self, kind: io::ErrorKind, why: &'static str) {
        let waiting = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some((kind, why));
            }
            state.out.clear();
            std::mem::take(&mut state.waiting)
        };
        for w in waiting {
            let _ = w.done.send(Err(closed(kind, why)));
        }
        self.wake.notify_one();
    }
}

fn closed(kind: io::ErrorKind, why: &'static str) -> RedisError {
    RedisError::from(io::Error::new(kind, why))
}

impl Pipe {
    /// Connects, introduces itself (`HELLO 3` or `AUTH`, then `SELECT`), and
    /// starts the connection's task on the calling runtime.
    pub(super) async fn open(config: PipeConfig<'_>) -> RedisResult<Pipe> {
        let connect = TcpStream::connect((config.host, config.port));
        let stream = match tokio::time::timeout(config.timeout, connect).await {
            Ok(stream) => stream?,
            Err(_) => {
                return Err(closed(
                    io::ErrorKind::TimedOut,
                    "connecting to Redis timed out",
                ))
            }
        };
        stream.set_nodelay(true)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            stream,
            home: std::thread::current().id(),
        });
        tokio::spawn(drive(shared.clone(), config.pushes));
        let pipe = Pipe {
            owner: Arc::new(Owner(shared)),
            timeout: config.timeout,
            db: config.db,
        };
        let mut hello = Vec::new();
        if config.protocol == ProtocolVersion::RESP3 {
            let mut cmd = redis::cmd("HELLO");
            cmd.arg(3);
            if let Some(password) = config.password {
                cmd.arg("AUTH")
                    .arg(config.username.unwrap_or("default"))
                    .arg(password);
            }
            hello.push(cmd);
        } else if let Some(password) = config.password {
            let mut cmd = redis::cmd("AUTH");
            if let Some(username) = config.username {
                cmd.arg(username);
            }
            hello.push(cmd.arg(password).to_owned());
        }
        if config.db != 0 {
            hello.push(redis::cmd("SELECT").arg(config.db).to_owned());
        }
        if !hello.is_empty() {
            for reply in pipe.send(&hello, 0).await? {
                if let Value::ServerError(e) = reply {
                    return Err(e.into());
                }
            }
        }
        Ok(pipe)
    }

    /// Sends `cmds` in one write and returns the reply to each after the
    /// first `skip`: a command's error is its reply ([`Value::ServerError`]),
    /// the connection's failure or a reply later than the timeout the `Err`.
    pub(super) async fn send(&self, cmds: &[Cmd], skip: usize) -> RedisResult<Vec<Value>> {
        self.call(
            |out| {
                for cmd in cmds {
                    cmd.write_packed_command(out);
                }
            },
            cmds.len(),
            skip,
            false,
        )
        .await
    }

    /// Sends `packed`, `replies` commands already encoded, and returns the
    /// replies to them but the first `skip`.
    pub(super) async fn send_packed(
        &self,
        packed: &[u8],
        replies: usize,
        skip: usize,
    ) -> RedisResult<Vec<Value>> {
        self.call(|out| out.extend_from_slice(packed), replies, skip, false)
            .await
    }

    /// The database it selected.
    pub(super) fn db(&self) -> i64 {
        self.db
    }

    /// Subscribes to `channel`, whose messages then go to the push sender.
    pub(super) async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        let cmd = redis::cmd("SUBSCRIBE").arg(channel).to_owned();
        let reply = self
            .call(|out| cmd.write_packed_command(out), 1, 0, true)
            .await?;
        match reply.into_iter().next() {
            Some(Value::ServerError(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Sends what `write` encodes, `replies` commands, and waits for their
    /// replies but the first `skip`.
    async fn call(
        &self,
        write: impl FnOnce(&mut Vec<u8>),
        replies: usize,
        skip: usize,
        subscribe: bool,
    ) -> RedisResult<Vec<Value>> {
        if replies == 0 {
            return Ok(Vec::new());
        }
        let shared = &self.owner.0;
        let (done, answer) = oneshot::channel();
        {
            let mut state = shared.lock();
            if let Some((kind, why)) = state.closed {
                return Err(closed(kind, why));
            }
            let idle = state.out.is_empty();
            write(&mut state.out);
            state.waiting.push_back(Waiting {
                left: replies,
                skip,
                subscribe,
                got: Vec::with_capacity(replies.saturating_sub(skip)),
                done,
            });
            // When bytes were queued already, the task was woken for them and
            // takes these too. Otherwise, with nothing being written, a caller
            // on the task's own thread writes them itself, sparing the task a
            // wake-up, and wakes it only for what the socket did not take.
            // Callers on other threads leave the writing to the task: writing
            // from there woke its reactor more often than it saved.
            if idle {
                let written = !state.writing
                    && std::thread::current().id() == shared.home
                    && write_now(&shared.stream, &mut state.out);
                if !written {
                    shared.wake.notify_one();
                }
            }
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(replies)) => replies,
            Ok(Err(_)) => Err(closed(
                io::ErrorKind::ConnectionAborted,
                "connection dropped",
            )),
            Err(_) => Err(closed(
                io::ErrorKind::TimedOut,
                "Redis did not answer in time",
            )),
        }
    }
}

/// Writes as much of `out` as the socket takes without waiting and drops it
/// from `out`; whether that was all of it.
fn write_now(stream: &TcpStream, out: &mut Vec<u8>) -> bool {
    match stream.try_write(out) {
        Ok(n) if n == out.len() => {
            out.clear();
            true
        }
        Ok(n) => {
            out.drain(..n);
            false
        }
        // The task meets the error, or waits for room.
        Err(_) => false,
    }
}

/// Closes the connection when its task ends, however it ends (a runtime
/// shutting down drops it mid-await).
struct Ending(Arc<Shared>);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0
            .close(io::ErrorKind::ConnectionAborted, "connection closed");
    }
}

/// The connection's task: writes what callers queued, reads replies and hands
/// each to its call, and pushes to `pushes`, until the connection closes.
async fn drive(shared: Arc<Shared>, pushes: Option<Arc<dyn AsyncPushSender>>) {
    let ending = Ending(shared.clone());
    let stream = &shared.stream;
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = Vec::with_capacity(16 * 1024);
    // `None`: the last handle was dropped.
    let ended = loop {
        tokio::select! {
            r = stream.readable() => {
                if let Err(e) = r {
                    break Some((e.kind(), "reading from Redis failed"));
                }
                match stream.try_read_buf(&mut input) {
                    Ok(0) => break Some((io::ErrorKind::UnexpectedEof, "Redis closed the connection")),
                    Ok(_) => {
                        if let Err(why) = dispatch(&shared, &mut input, pushes.as_deref()) {
                            break Some((io::ErrorKind::InvalidData, why));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => break Some((e.kind(), "reading from Redis failed")),
                }
            },
            () = shared.wake.notified() => {
                {
                    let mut state = shared.lock();
                    if state.closed.is_some() {
                        break None;
                    }
                    std::mem::swap(&mut state.out, &mut output);
                    state.writing = !output.is_empty();
                }
                if let Err(e) = write_all(stream, &output).await {
                    break Some((e.kind(), "writing to Redis failed"));
                }
                output.clear();
                // Whatever came meanwhile woke this task again.
                shared.lock().writing = false;
            }
        }
    };
    let Some((kind, why)) = ended else { return };
    shared.close(kind, why);
    drop(ending);
    if let Some(pushes) = pushes {
        // As the `redis` crate tells of a lost connection.
        let _ = pushes.send(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hands every whole reply in `input` to its call and every push to
/// `pushes`, and drops them from `input`.
fn dispatch(
    shared: &Shared,
    input: &mut BytesMut,
    pushes: Option<&dyn AsyncPushSender>,
) -> Result<(), &'static str> {
    let mut used = 0;
    let mut done = Vec::new();
    let result = loop {
        let (value, len) = match parse(&input[used..]) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break Ok(()),
            Err(why) => break Err(why),
        };
        used += len;
        let mut state = shared.lock();
        // A push is a call's reply only when it confirms the subscription
        // the call asked for.
        let reply = match &value {
            Value::Push { kind, .. } => {
                matches!(kind, PushKind::Subscribe | PushKind::Unsubscribe)
                    && state.waiting.front().is_some_and(|w| w.subscribe)
            }
            _ => true,
        };
        if !reply {
            drop(state);
            if let (Some(pushes), Value::Push { kind, data }) = (pushes, value) {
                let _ = pushes.send(PushInfo { kind, data });
            }
            continue;
        }
        let Some(w) = state.waiting.front_mut() else {
            break Err("a reply to no command");
        };
        if w.skip > 0 {
            w.skip -= 1;
        } else {
            w.got.push(value);
        }
        w.left -= 1;
        if w.left == 0 {
            done.extend(state.waiting.pop_front());
        }
    };
    input.advance(used);
    for w in done {
        let _ = w.done.send(Ok(w.got));
    }
    result
}

/// The value at the start of `buf` and its length in bytes; `None` when it
/// has not all arrived.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, &'static str> {
    let mut p = Parser { buf, at: 0 };
    match p.value(0) {
        Ok(v) => Ok(Some((v, p.at))),
        Err(Short::More) => Ok(None),
        Err(Short::Bad(why)) => Err(why),
    }
}

enum Short {
    /// More bytes are needed.
    More,
    Bad(&'static str),
}

struct Parser<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    /// The line from here to its `\r\n`, which is passed.
    fn line(&mut self) -> Result<&'a [u8], Short> {
        let rest = &self.buf[self.at..];
        let end = memchr::memchr(b'\n', rest).ok_or(Short::More)?;
        if end == 0 || rest[end - 1] != b'\r' {
            return Err(Short::Bad("a line of a reply without CRLF"));
        }
        self.at += end + 1;
        Ok(&rest[..end - 1])
    }

    fn int(&mut self) -> Result<i64, Short> {
        let line = self.line()?;
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(Short::Bad("a number in a reply that is none"))
    }

    /// A length or count; `None` for -1 (a null).
    fn len(&mut self) -> Result<Option<usize>, Short> {
        match self.int()? {
            -1 => Ok(None),
            n => usize::try_from(n)
                .map(Some)
                .map_err(|_| Short::Bad("a negative length in a reply")),
        }
    }

    /// `n` bytes and their `\r\n`.
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(Short::Bad("a length too long"))?;
        if self.buf.len() < end + 2 {
            return Err(Short::More);
        }
        if &self.buf[end..end + 2] != b"\r\n" {
            return Err(Short::Bad("a string of a reply longer than it said"));
        }
        let bytes = &self.buf[self.at..end];
        self.at = end + 2;
        Ok(bytes)
    }

    fn values(&mut self, n: usize, depth: usize) -> Result<Vec<Value>, Short> {
        // Not sized by `n` alone: a hostile count must not allocate.
        let mut values = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            values.push(self.value(depth + 1)?);
        }
        Ok(values)
    }

    fn value(&mut self, depth: usize) -> Result<Value, Short> {
        if depth > MAX_DEPTH {
            return Err(Short::Bad("a reply nested too deep"));
        }
        let start = self.at;
        let Some(&kind) = self.buf.get(self.at) else {
            return Err(Short::More);
        };
        self.at += 1;
        Ok(match kind {
            b'+' => match self.line()? {
                b"OK" => Value::Okay,
                s => Value::SimpleString(String::from_utf8_lossy(s).into_owned()),
            },
            b':' => Value::Int(self.int()?),
            b'$' => match self.len()? {
                None => Value::Nil,
                Some(n) => Value::BulkString(self.bytes(n)?.to_vec()),
            },
            b'*' => match self.len()? {
                None => Value::Nil,
                Some(n) => Value::Array(self.values(n, depth)?),
            },
            b'~' => match self.len()? {
                None => Value::Nil,
                Some(n) => Value::Set(self.values(n, depth)?),
            },
            b'%' => {
                let n = self.len()?.unwrap_or(0);
                let mut pairs = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    let k = self.value(depth + 1)?;
                    pairs.push((k, self.value(depth + 1)?));
                }
                Value::Map(pairs)
            }
            b'>' => {
                let n = self.len()?.unwrap_or(0);
                let mut data = self.values(n, depth)?;
                let kind = if data.is_empty() {
                    PushKind::Other(String::new())
                } else {
                    push_kind(data.remove(0))
                };
                Value::Push { kind, data }
            }
            b'_' => {
                self.line()?;
                Value::Nil
            }
            b'#' => match self.line()? {
                b"t" => Value::Boolean(true),
                b"f" => Value::Boolean(false),
                _ => return Err(Short::Bad("a boolean in a reply that is none")),
            },
            b'|' => {
                // Attributes, which this store never asks for: dropped, and
                // the value they describe is the reply.
                let n = self.len()?.unwrap_or(0);
                for _ in 0..2 * n {
                    self.value(depth + 1)?;
                }
                return self.value(depth);
            }
            // Errors, doubles, big numbers, verbatim strings: rare here, so
            // found whole, then read by the `redis` crate's own parser.
            b'-' | b',' | b'(' => {
                self.line()?;
                self.theirs(start)?
            }
            b'!' | b'=' => {
                let n = self.len()?.ok_or(Short::Bad("a null error"))?;
                self.bytes(n)?;
                self.theirs(start)?
            }
            _ => return Err(Short::Bad("a reply of no RESP type")),
        })
    }

    /// The value from `start` to here, as the `redis` crate reads it.
    fn theirs(&self, start: usize) -> Result<Value, Short> {
        redis::parse_redis_value(&self.buf[start..self.at])
            .map_err(|_| Short::Bad("a reply the redis crate cannot read"))
    }
}

fn push_kind(first: Value) -> PushKind {
    let name = match first {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::SimpleString(s) => s,
        _ => return PushKind::Other(String::new()),
    };
    match name.as_str() {
        "invalidate" => PushKind::Invalidate,
        "message" => PushKind::Message,
        "pmessage" => PushKind::PMessage,
        "smessage" => PushKind::SMessage,
        "subscribe" => PushKind::Subscribe,
        "unsubscribe" => PushKind::Unsubscribe,
        "psubscribe" => PushKind::PSubscribe,
        "punsubscribe" => PushKind::PUnsubscribe,
        "ssubscribe" => PushKind::SSubscribe,
        "sunsubscribe" => PushKind::SUnsubscribe,
        _ => PushKind::Other(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redis::ErrorKind;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A reply as Redis writes it, from a tree of the types this store meets.
    fn reply() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
            Just(b"+OK\r\n".to_vec()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
                let mut v = format!("${}\r\n", b.len()).into_bytes();
                v.extend(b);
                v.extend(b"\r\n");
                v
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
            Just(b"_\r\n".to_vec()),
            Just(b"#t\r\n".to_vec()),
            Just(b"#f\r\n".to_vec()),
            (-1e9f64..1e9).prop_map(|d| format!(",{d}\r\n").into_bytes()),
            Just(b"(3492890328409238509324850943850943825024385\r\n".to_vec()),
            Just(b"=15\r\ntxt:Some string\r\n".to_vec()),
            "[A-Z]{3,9} [a-z ]{0,20}".prop_map(|s| format!("-{s}\r\n").into_bytes()),
            Just(b"!21\r\nSYNTAX invalid syntax\r\n".to_vec()),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            let many = proptest::collection::vec(inner, 0..5);
            prop_oneof![
                many.clone().prop_map(|vs| framed('*', vs.len(), vs)),
                many.clone().prop_map(|vs| framed('~', vs.len(), vs)),
                many.clone().prop_map(|vs| {
                    let n = vs.len() / 2;
                    framed('%', n, vs[..2 * n].to_vec())
                }),
                (
                    prop_oneof![Just("invalidate"), Just("message"), Just("subscribe")],
                    many
                )
                    .prop_map(|(kind, vs)| {
                        let mut all = vec![format!("${}\r\n{kind}\r\n", kind.len()).into_bytes()];
                        all.extend(vs);
                        framed('>', all.len(), all)
                    }),
            ]
        })
    }

    fn framed(kind: char, n: usize, parts: Vec<Vec<u8>>) -> Vec<u8> {
        let mut v = format!("{kind}{n}\r\n").into_bytes();
        for p in parts {
            v.extend(p);
        }
        v
    }

    proptest! {
        #[test]
        fn replies_read_as_the_redis_crate_reads_them_and_wait_for_their_last_byte(r in reply()) {
            let theirs = redis::parse_redis_value(&r).expect("the redis crate reads it");
            let (ours, len) = parse(&r).expect("no error").expect("whole");
            prop_assert_eq!(ours, theirs);
            prop_assert_eq!(len, r.len());
            for cut in 0..r.len() {
                prop_assert!(parse(&r[..cut]).expect("no error").is_none(), "cut at {}", cut);
            }
        }

        #[test]
        fn any_bytes_are_read_or_refused_never_a_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&b);
        }
    }

    #[test]
    fn two_replies_in_one_buffer_are_read_one_at_a_time() {
        let buf = b"+QUEUED\r\n*2\r\n:1\r\n:0\r\n";
        let (first, len) = parse(buf).unwrap().unwrap();
        assert_eq!(first, Value::SimpleString("QUEUED".into()));
        let (second, rest) = parse(&buf[len..]).unwrap().unwrap();
        assert_eq!(second, Value::Array(vec![Value::Int(1), Value::Int(0)]));
        assert_eq!(len + rest, buf.len());
    }

    #[test]
    fn hostile_replies_are_refused() {
        for bad in [
            &b"?what\r\n"[..],
            b"+no carriage return\n",
            b":twelve\r\n",
            b"$-5\r\n",
            b"$3\r\nabcdef\r\n",
            b"#x\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Nesting deeper than any reply to this store's commands.
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        // A huge count allocates nothing before its elements arrive.
        assert!(parse(b"*9223372036854775807\r\n:1\r\n").unwrap().is_none());
        assert!(parse(b"$9223372036854775807\r\nab").unwrap().is_none());
    }

    #[test]
    fn attributes_are_dropped_and_the_value_they_describe_is_the_reply() {
        let buf = b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:7\r\n";
        let (value, len) = parse(buf).unwrap().unwrap();
        assert_eq!(value, Value::Array(vec![Value::Int(7)]));
        assert_eq!(len, buf.len());
    }

    /// Pushes received, in order.
    #[derive(Clone, Default)]
    struct Heard(Arc<Mutex<Vec<PushInfo>>>);

    impl AsyncPushSender for Heard {
        fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
            self.0.lock().unwrap().push(info);
            Ok(())
        }
    }

    fn config(port: u16, pushes: Option<Arc<dyn AsyncPushSender>>) -> PipeConfig<'static> {
        PipeConfig {
            host: "127.0.0.1",
            port,
            username: None,
            password: None,
            db: 0,
            protocol: ProtocolVersion::RESP2,
            timeout: Duration::from_secs(2),
            pushes,
        }
    }

    type Reader = tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>;
    type Writer = tokio::net::tcp::OwnedWriteHalf;

    /// A server on loopback that takes one connection and runs `serve` on
    /// it; its port and `serve`'s outcome.
    async fn fake_redis<T, F>(
        serve: impl FnOnce(Reader, Writer) -> F + Send + 'static,
    ) -> (u16, tokio::task::JoinHandle<T>)
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, w) = s.into_split();
            serve(tokio::io::BufReader::new(r), w).await
        });
        (port, server)
    }

    /// The next command a server reads, as its arguments.
    async fn command(r: &mut (impl AsyncBufReadExt + Unpin)) -> Vec<String> {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let n: usize = line.trim_end().strip_prefix('*').unwrap().parse().unwrap();
        let mut args = Vec::new();
        for _ in 0..n {
            line.clear();
            r.read_line(&mut line).await.unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            args.push(line.trim_end().to_owned());
        }
        args
    }

    #[tokio::test]
    async fn calls_get_their_own_replies_in_order_though_replies_arrive_in_pieces() {
        let (port, server) = fake_redis(|mut r, mut w| async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(command(&mut r).await);
            }
            // All three answers, a byte at a time.
            for b in b"$1\r\na\r\n:2\r\n-ERR no such thing\r\n" {
                w.write_all(&[*b]).await.unwrap();
                w.flush().await.unwrap();
            }
            seen
        })
        .await;
        let pipe = Pipe::open(config(port, None)).await.unwrap();
        let get = redis::cmd("GET").arg("k").to_owned();
        let incr = redis::cmd("INCR").arg("n").to_owned();
        let bad = redis::cmd("NOSUCH").to_owned();
        let (first, second) = ([get], [incr, bad]);
        let (one, two) = tokio::join!(pipe.send(&first, 0), pipe.send(&second, 0));
        assert_eq!(one.unwrap(), vec![Value::BulkString(b"a".to_vec())]);
        let two = two.unwrap();
        assert_eq!(two[0], Value::Int(2));
        assert!(matches!(&two[1], Value::ServerError(e) if e.code() == "ERR"));
        let seen = server.await.unwrap();
        assert_eq!(seen, [vec!["GET", "k"], vec!["INCR", "n"], vec!["NOSUCH"]]);
    }

    #[tokio::test]
    async fn calls_from_another_thread_and_commands_larger_than_the_socket_takes_go_out_whole() {
        let big = "x".repeat(8 << 20);
        let (port, server) = fake_redis(|mut r, mut w| async move {
            let mut seen = Vec::new();
            for reply in [&b"+OK\r\n"[..], b":7\r\n"] {
                let args = command(&mut r).await;
                seen.push((
                    args[0].clone(),
                    args[1..].iter().map(String::len).sum::<usize>(),
                ));
                w.write_all(reply).await.unwrap();
            }
            seen
        })
        .await;
        let pipe = Pipe::open(config(port, None)).await.unwrap();
        // Larger than any socket buffer: the caller writes what the socket
        // takes, the connection's task the rest.
        let set = redis::cmd("SET").arg("k").arg(&big).to_owned();
        assert_eq!(pipe.send(&[set], 0).await.unwrap(), vec![Value::Okay]);
        // From a thread other than the connection's: its task writes it.
        let other = pipe.clone();
        let reply = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(other.send(&[redis::cmd("INCR").arg("n").to_owned()], 0))
        })
        .await
        .unwrap();
        assert_eq!(reply.unwrap(), vec![Value::Int(7)]);
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [("SET".to_owned(), 1 + big.len()), ("INCR".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn pushes_go_to_the_sender_and_a_lost_connection_fails_the_calls_waiting() {
        let (port, server) = fake_redis(|mut r, mut w| async move {
            assert_eq!(command(&mut r).await, ["SUBSCRIBE", "fences"]);
            w.write_all(b">3\r\n$9\r\nsubscribe\r\n$6\r\nfences\r\n:1\r\n")
                .await
                .unwrap();
            assert_eq!(command(&mut r).await, ["GET", "k"]);
            // A push between the command and its reply, then the connection ends.
            w.write_all(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n")
                .await
                .unwrap();
        })
        .await;
        let heard = Heard::default();
        let pipe = Pipe::open(config(port, Some(Arc::new(heard.clone()))))
            .await
            .unwrap();
        pipe.subscribe("fences").await.unwrap();
        let get = redis::cmd("GET").arg("k").to_owned();
        let e = pipe.send(std::slice::from_ref(&get), 0).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        server.await.unwrap();
        let heard = heard.0.lock().unwrap().clone();
        assert_eq!(heard.len(), 2, "{heard:?}");
        assert_eq!(heard[0].kind, PushKind::Invalidate);
        assert_eq!(
            heard[0].data,
            vec![Value::Array(vec![Value::BulkString(b"k".to_vec())])]
        );
        assert_eq!(heard[1].kind, PushKind::Disconnection);
        // Closed for good: the next call fails at once.
        assert_eq!(
            pipe.send(&[get], 0).await.unwrap_err().kind(),
            ErrorKind::Io
        );
    }

    #[tokio::test]
    async fn a_server_that_stays_silent_times_the_call_out() {
        // It holds the connection open and answers nothing.
        let (port, server) = fake_redis(|r, w| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop((r, w));
        })
        .await;
        let mut config = config(port, None);
        config.timeout = Duration::from_millis(200);
        let pipe = Pipe::open(config).await.unwrap();
        let started = std::time::Instant::now();
        let e = pipe.send(&[redis::cmd("PING")], 0).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        server.abort();
    }

    #[tokio::test]
    async fn it_introduces_itself_with_hello_auth_and_select() {
        let (port, server) = fake_redis(|mut r, mut w| async move {
            let hello = command(&mut r).await;
            let select = command(&mut r).await;
            w.write_all(b"%1\r\n+server\r\n+redis\r\n+OK\r\n")
                .await
                .unwrap();
            (hello, select)
        })
        .await;
        let mut config = config(port, None);
        config.username = Some("app");
        config.password = Some("s3cret");
        config.db = 3;
        config.protocol = ProtocolVersion::RESP3;
        let pipe = Pipe::open(config).await.unwrap();
        assert_eq!(pipe.db(), 3);
        let (hello, select) = server.await.unwrap();
        assert_eq!(hello, ["HELLO", "3", "AUTH", "app", "s3cret"]);
        assert_eq!(select, ["SELECT", "3"]);
    }

    #[tokio::test]
    async fn a_refused_password_fails_the_open() {
        let (port, _server) = fake_redis(|mut r, mut w| async move {
            assert_eq!(command(&mut r).await, ["AUTH", "not-the-pass"]);
            w.write_all(b"-WRONGPASS invalid username-password pair\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        })
        .await;
        let mut config = config(port, None);
        config.password = Some("not-the-pass");
        let Err(e) = Pipe::open(config).await else {
            panic!("opened with a refused password");
        };
        assert_eq!(e.code(), Some("WRONGPASS"), "{e}");
        assert!(
            !e.to_string().contains("not-the-pass"),
            "the password leaked: {e}"
        );
    }
}
