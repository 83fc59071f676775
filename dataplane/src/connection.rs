//! One client connection: read bytes → decode → dispatch → encode → write.
//!
//! The connection owns both buffers, so nothing above it sees bytes. It answers the requests
//! decodable from what has arrived, then writes the answers at once: a pipelined burst costs
//! one write, and a lone request is answered as soon as it is complete.
//!
//! It also owns each client's share of the hostile-client policy (README, "Hostile clients"):
//! - **backpressure**: answering stops once `max_pending_output` bytes of answers wait; they
//!   are written before anything more is read or answered, and a client that leaves them
//!   unread for `output_timeout` is cut;
//! - **turns**: at most [`REQUESTS_PER_TURN`] requests are answered before the task yields, so
//!   a pipelining client cannot hold the single data-plane thread from peers and the tick loop;
//! - **partial requests**: beyond [`PARTIAL_BASE`] bytes an unfinished request draws on the
//!   node's shared budget as its bytes arrive; a connection that needs more while it is spent
//!   is cut. Authenticated nodes (HELLO/AUTH) are exempt: their frames are the cluster's own;
//! - **timers count requests, not bytes**: `idle_timeout` runs from the last complete request
//!   and `incomplete_timeout` from the start of the unfinished one.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use codec::{CodecError, ColonyCodec, Decoded, Message, Reply};
use shared::log_limit::{LogLimit, DEFAULT_INTERVAL};
use shared::warn_limited;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, Instrument};

use crate::cmd::{self, Answer, Deferred, Session};
use crate::config::PARTIAL_BASE;
use crate::gate::Gated;
use crate::state::Shared;
use crate::stream::{Parked, ServerStream};

/// Initial capacity of each buffer; they grow up to the codec limits when needed.
const BUFFER_CAPACITY: usize = 8 * 1024;
/// Requests answered before the connection lets the other tasks of its thread run.
const REQUESTS_PER_TURN: usize = 64;
/// Bytes drawn from the partial-request budget at a time (less when a frame needs less).
const BUDGET_CHUNK: usize = 64 * 1024;
/// Most bytes read at once by an authenticated node.
const READ_CHUNK: usize = 64 * 1024;

/// The connection's wait for shutdown, polled first on every wakeup of its task (so a client
/// that keeps the socket readable cannot hold shutdown off), hence gated.
type Shutdown = Gated<std::pin::Pin<Box<WaitForCancellationFutureOwned>>>;

/// Cut clients: anyone can cause these at line rate, so each reason is logged at most once
/// per interval with the count held back (one site per reason, so that a flood of one
/// cannot hide another).
static SLOW_READER_LOG: LogLimit = LogLimit::new("dataplane_cut_slow_reader", DEFAULT_INTERVAL);
static OVER_BUDGET_LOG: LogLimit = LogLimit::new("dataplane_cut_memory_budget", DEFAULT_INTERVAL);
static INCOMPLETE_LOG: LogLimit = LogLimit::new("dataplane_cut_request_timeout", DEFAULT_INTERVAL);
/// Broken binary framing, likewise.
static FRAMING_LOG: LogLimit = LogLimit::new("dataplane_framing_error", DEFAULT_INTERVAL);

pub(crate) struct Connection {
    socket: ServerStream,
    codec: ColonyCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    shared: Arc<Shared>,
    session: Session,
    /// The share of the partial-request budget this connection holds.
    grant: Grant,
    /// Where to move once the peer authenticates as a node (the node lane); `None` once
    /// there, or when the server has no lane.
    lane: Option<Handle>,
    /// When the last complete request was decoded (or the connection opened).
    last_request: Instant,
    /// When the unfinished request at the head of the read buffer began.
    partial_since: Option<Instant>,
    /// The connection's span (`peer`), entered only where something may log: entering it
    /// on every poll of the task, as `Instrument` does, cost more than answering a PING.
    span: tracing::Span,
}

/// Where answering the buffered requests stopped.
enum Step {
    /// Everything buffered is answered.
    Drained,
    /// The turn is over (enough requests answered, or enough answers waiting); more may be
    /// buffered.
    Turn,
    /// This request's answer comes later; nothing after it is answered before it.
    Deferred(Deferred, codec::Style),
    /// The last answer ends the connection.
    Close,
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    PeerClosed,
    Shutdown,
    Idle,
    /// A request begun was not completed within `incomplete_timeout`.
    Incomplete,
    /// The client left its answers unread for `output_timeout`.
    SlowReader,
    /// The client needed more of the partial-request budget than was left.
    OverBudget,
    Framing(CodecError),
    Io(std::io::Error),
    Refused,
    /// The peer authenticated as a node: it moves to the node lane.
    Promote,
}

/// Bytes of the shared partial-request budget one connection holds, given back when it ends
/// however it ends.
struct Grant {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.shared.partial.give_back(self.bytes);
    }
}

/// A connection on its way to the node lane: its socket out of the reactor it came from,
/// and everything it had buffered or learned.
pub(crate) struct Promoted {
    socket: Parked,
    codec: ColonyCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    session: Session,
    last_request: Instant,
    partial_since: Option<Instant>,
    span: tracing::Span,
}

impl Promoted {
    /// The connection again, on the runtime this is called on.
    pub(crate) fn resume(self, shared: Arc<Shared>) -> std::io::Result<Connection> {
        Ok(Connection {
            socket: self.socket.resume()?,
            codec: self.codec,
            read_buf: self.read_buf,
            write_buf: self.write_buf,
            session: self.session,
            grant: Grant {
                shared: shared.clone(),
                bytes: 0,
            },
            shared,
            lane: None,
            last_request: self.last_request,
            partial_since: self.partial_since,
            span: self.span,
        })
    }
}

impl Connection {
    /// A new client's connection; once it authenticates as a node it asks to move to `lane`.
    /// `not_a_node` when TLS showed the peer holds no node certificate for its address, so
    /// it may not HELLO. What it logs is logged in `span`.
    pub(crate) fn new(
        socket: ServerStream,
        shared: Arc<Shared>,
        lane: Option<Handle>,
        not_a_node: bool,
        span: tracing::Span,
    ) -> Self {
        let mut session = Session::new(&shared);
        session.not_a_node = not_a_node;
        Connection {
            socket,
            codec: ColonyCodec::new(shared.config.limits),
            read_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
            write_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
            session,
            grant: Grant {
                shared: shared.clone(),
                bytes: 0,
            },
            shared,
            lane,
            last_request: Instant::now(),
            partial_since: None,
            span,
        }
    }

    /// Serves the client until it leaves, or until it has authenticated as a node and must
    /// move to the node lane: then returns it with the lane to resume it on.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Option<(Promoted, Handle)> {
        let end = self.serve(shutdown).await;
        let span = self.span.clone();
        let _entered = span.enter();
        match &end {
            End::Promote => return self.promote(),
            End::PeerClosed | End::Shutdown => debug!(reason = ?end, "connection closed"),
            End::Idle => debug!("connection closed: idle timeout"),
            End::Incomplete => warn_limited!(
                INCOMPLETE_LOG,
                reason = "request_timeout",
                "connection cut: a request stayed incomplete"
            ),
            End::SlowReader => warn_limited!(
                SLOW_READER_LOG,
                reason = "slow_reader",
                pending = self.write_buf.len(),
                "connection cut: the client left its answers unread"
            ),
            End::OverBudget => warn_limited!(
                OVER_BUDGET_LOG,
                reason = "memory_budget",
                budget = self.shared.partial.limit(),
                used = self.shared.partial.used(),
                "connection cut: the budget for partly received requests is spent"
            ),
            End::Framing(e) => {
                warn_limited!(FRAMING_LOG, error = %e, "connection closed: framing error");
            }
            End::Io(e) => debug!(error = %e, "connection closed: I/O error"),
            End::Refused => debug!("connection closed: authentication failed"),
        }
        None
    }

    /// Takes the socket out of this thread's reactor for the node lane.
    fn promote(self) -> Option<(Promoted, Handle)> {
        let lane = self.lane?;
        let socket = match self.socket.park() {
            Ok(socket) => socket,
            Err(e) => {
                debug!(error = %e, "cannot move an authenticated node to the node lane");
                return None;
            }
        };
        let promoted = Promoted {
            socket,
            codec: self.codec,
            read_buf: self.read_buf,
            write_buf: self.write_buf,
            session: self.session,
            last_request: self.last_request,
            partial_since: self.partial_since,
            span: self.span,
        };
        Some((promoted, lane))
    }

    async fn serve(&mut self, shutdown: CancellationToken) -> End {
        // One timer for the connection's life, moved earlier when an unfinished request
        // starts and re-armed only when it fires early: touching the timer wheel on every
        // request would cost more than answering a PING. Gated, as the shutdown wait is:
        // both are polled on every wakeup, and nearly every wakeup is the socket's.
        let mut armed = self.deadline();
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        let mut timer = Gated::new(timer);
        // Likewise one registration with the shutdown token, not one per request.
        let mut cancelled: Shutdown = Gated::new(Box::pin(shutdown.cancelled_owned()));
        loop {
            if let Some(end) = self.drain(false, &mut cancelled).await {
                return end;
            }
            self.settle_partial();
            if self.lane.is_some() && self.session.peer.is_some() {
                return End::Promote;
            }
            // Only an unfinished request moves the deadline earlier: the idle one only ever
            // moves later, and the timer catches up with that when it fires.
            if self.partial_since.is_some() {
                let deadline = self.deadline();
                if deadline < armed {
                    timer.get_mut().as_mut().reset(deadline);
                    armed = deadline;
                }
            }
            let Some(room) = self.read_room() else {
                let message = Message::error(
                    "memory_budget",
                    format!(
                        "this node's budget of {} bytes for partly received requests is spent; \
                         closing",
                        self.shared.partial.limit()
                    ),
                );
                self.send_unsolicited(&message).await;
                return End::OverBudget;
            };
            // Room for the next read, made only when less than half of it is there: each
            // request answered moves the buffer's start on, and a `reserve` of the full
            // amount would then move it back (a call and a copy) on every request.
            let want = room.min(READ_CHUNK);
            if self.read_buf.capacity() - self.read_buf.len() < want / 2 {
                self.read_buf.reserve(want);
            }
            let mut limited = (&mut self.read_buf).limit(room);
            let read = tokio::select! {
                biased;
                _ = &mut cancelled => return End::Shutdown,
                read = self.socket.read_buf(&mut limited) => read,
                _ = &mut timer => {
                    let deadline = self.deadline();
                    if Instant::now() < deadline {
                        timer.get_mut().as_mut().reset(deadline);
                        armed = deadline;
                        continue;
                    }
                    return self.expire().await;
                }
            };
            match read {
                Err(e) => return End::Io(e),
                Ok(0) => {
                    return self
                        .drain(true, &mut cancelled)
                        .await
                        .unwrap_or(End::PeerClosed);
                }
                Ok(_) => {}
            }
        }
    }

    /// When the connection expires unless a request completes: `idle_timeout` after the last
    /// complete request, or `incomplete_timeout` after an unfinished one began if sooner.
    fn deadline(&self) -> Instant {
        let config = &self.shared.config;
        let idle = self.last_request + config.idle_timeout;
        match self.partial_since {
            Some(since) => idle.min(since + config.incomplete_timeout),
            None => idle,
        }
    }

    /// Tells the client which timer ran out, then ends.
    async fn expire(&mut self) -> End {
        let config = self.shared.config;
        let (message, end) = match self.partial_since {
            Some(since) if since.elapsed() >= config.incomplete_timeout => (
                Message::error(
                    "request_timeout",
                    format!(
                        "a request begun {:?} ago is still incomplete; closing",
                        config.incomplete_timeout
                    ),
                ),
                End::Incomplete,
            ),
            _ => (
                Message::error(
                    "idle_timeout",
                    format!("no complete request for {:?}; closing", config.idle_timeout),
                ),
                End::Idle,
            ),
        };
        self.send_unsolicited(&message).await;
        end
    }

    /// After the buffered requests are answered: notes when an unfinished request began and
    /// gives back the budget the read buffer no longer needs.
    fn settle_partial(&mut self) {
        if self.codec.incomplete(&self.read_buf).is_some() {
            self.partial_since.get_or_insert_with(Instant::now);
        } else {
            self.partial_since = None;
        }
        let needed = if self.session.peer.is_some() {
            0
        } else {
            self.read_buf.len().saturating_sub(PARTIAL_BASE)
        };
        if self.grant.bytes > needed {
            self.shared.partial.give_back(self.grant.bytes - needed);
            self.grant.bytes = needed;
        }
    }

    /// How many bytes the next read may add to the read buffer (at least one), drawing on the
    /// shared budget when this connection's own allowance is used up; `None` when the budget
    /// is spent.
    fn read_room(&mut self) -> Option<usize> {
        if self.session.peer.is_some() {
            return Some(READ_CHUNK);
        }
        let have = self.read_buf.len();
        let allowed = PARTIAL_BASE + self.grant.bytes;
        if have < allowed {
            return Some(allowed - have);
        }
        // A binary frame says how much it lacks; a text line does not.
        let chunk = match self.codec.incomplete(&self.read_buf) {
            Some(need) if need > 1 => need.min(BUDGET_CHUNK),
            _ => BUDGET_CHUNK,
        };
        if !self.shared.partial.take(chunk) {
            return None;
        }
        self.grant.bytes += chunk;
        Some(PARTIAL_BASE + self.grant.bytes - have)
    }

    /// Answers everything buffered (waiting out deferred answers in order) and flushes,
    /// yielding between turns. `Some` means the connection must end.
    async fn drain(&mut self, eof: bool, shutdown: &mut Shutdown) -> Option<End> {
        loop {
            let step = match self.answer_buffered(eof) {
                Ok(step) => step,
                Err(e) => return Some(self.fail(e).await),
            };
            // Usually the socket takes every answer at once: no future for the flush.
            match self.write_now() {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(end) = self.flush().await {
                        return Some(end);
                    }
                }
                Err(e) => return Some(End::Io(e)),
            }
            match step {
                Step::Drained => return None,
                // Let the other connections (and the tick loop) on this thread have a go.
                Step::Turn => tokio::task::yield_now().await,
                Step::Close => {
                    let _ = self.socket.shutdown().await;
                    return Some(End::Refused);
                }
                Step::Deferred(answer, style) => {
                    let message = tokio::select! {
                        biased;
                        _ = &mut *shutdown => return Some(End::Shutdown),
                        message = answer.instrument(self.span.clone()) => message,
                    };
                    self.encode_answer(&message, style, &mut 0);
                    self.shared.stats.add(0, 1, 0);
                }
            }
        }
    }

    fn encode_answer(&mut self, answer: &Message, style: codec::Style, errors: &mut u64) {
        if let Err(e) = self.codec.encode(
            Reply {
                message: answer,
                style,
            },
            &mut self.write_buf,
        ) {
            // The answer itself is too big for a frame: say so instead.
            *errors += 1;
            let message = Message::error("internal", format!("cannot send the answer: {e}"));
            let _ = self.codec.encode(
                Reply {
                    message: &message,
                    style,
                },
                &mut self.write_buf,
            );
        }
    }

    /// Answers the complete requests in the read buffer (all of it at EOF), appending the
    /// answers to the write buffer, until a request must be answered later or closes, or the
    /// turn is over.
    fn answer_buffered(&mut self, eof: bool) -> Result<Step, CodecError> {
        let (mut frames_in, mut frames_out, mut errors) = (0, 0, 0);
        let mut answered = 0;
        let max_pending = self.shared.config.max_pending_output;
        let result = loop {
            if self.write_buf.len() >= max_pending || answered >= REQUESTS_PER_TURN {
                break Ok(Step::Turn);
            }
            // Plain `PING` lines, the commonest request, answered without building a message.
            // Still within the turn; the pending-output check may be overshot by the answers
            // of one turn (64 x 5 bytes), as one large answer overshoots it.
            let pings = self
                .codec
                .skip_pings(&mut self.read_buf, REQUESTS_PER_TURN - answered);
            if pings > 0 {
                for _ in 0..pings {
                    self.write_buf.extend_from_slice(codec::text::PONG_LINE);
                }
                (frames_in, frames_out) = (frames_in + pings as u64, frames_out + pings as u64);
                answered += pings;
                continue;
            }
            // Nothing buffered decodes to nothing, whatever the framing or EOF.
            if self.read_buf.is_empty() {
                break Ok(Step::Drained);
            }
            let decoded = if eof {
                self.codec.decode_eof(&mut self.read_buf)
            } else {
                self.codec.decode(&mut self.read_buf)
            };
            let (answer, style) = match decoded {
                Ok(Some(Decoded::Message(request, style))) => {
                    if matches!(request, Message::Stats) {
                        // Let STATS see this batch's traffic so far, not just earlier batches.
                        self.shared.stats.add(frames_in, frames_out, errors);
                        (frames_in, frames_out, errors) = (0, 0, 0);
                    }
                    // PING, the commonest request, never logs; any other may.
                    let _entered = (!matches!(request, Message::Ping)).then(|| self.span.enter());
                    (
                        cmd::dispatch(request, &self.shared, &mut self.session),
                        style,
                    )
                }
                Ok(Some(Decoded::Invalid(e))) => {
                    (Answer::Now(e.to_message()), self.codec.error_style())
                }
                Ok(None) => break Ok(Step::Drained),
                Err(e) => break Err(e),
            };
            frames_in += 1;
            answered += 1;
            let (message, close) = match answer {
                Answer::Now(m) => (m, false),
                Answer::Close(m) => (m, true),
                Answer::Quiet(_) if style == codec::Style::Binary => continue,
                Answer::Quiet(m) => (m, false),
                Answer::Later(deferred) => break Ok(Step::Deferred(deferred, style)),
            };
            if matches!(message, Message::Error { .. }) {
                errors += 1;
            }
            self.encode_answer(&message, style, &mut errors);
            frames_out += 1;
            if close {
                break Ok(Step::Close);
            }
        };
        if result.is_err() {
            errors += 1;
        }
        if answered > 0 {
            // The timers count complete requests: one clock read per batch, not per request.
            self.last_request = Instant::now();
            self.partial_since = None;
        }
        self.shared.stats.add(frames_in, frames_out, errors);
        result
    }

    /// Writes the pending answers; a client that leaves them unread for `output_timeout` is
    /// cut.
    async fn flush(&mut self) -> Result<(), End> {
        match self.write_pending(self.shared.config.output_timeout).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(End::SlowReader),
            Err(e) => Err(End::Io(e)),
        }
    }

    /// One attempt to write the pending answers that does not wait and arms no timer (and
    /// a flush, which sends what TLS buffered; a no-op on TCP): true once all are sent.
    fn write_now(&mut self) -> std::io::Result<bool> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut socket = std::pin::Pin::new(&mut self.socket);
        if !self.write_buf.is_empty() {
            match socket.as_mut().poll_write(&mut cx, &self.write_buf) {
                // All of it, as usual: `clear` keeps the buffer's start in place. Else
                // `advance`, not `split_to`: no shared buffer, no reference counting.
                std::task::Poll::Ready(Ok(n)) if n >= self.write_buf.len() => {
                    self.write_buf.clear()
                }
                std::task::Poll::Ready(Ok(n)) => self.write_buf.advance(n),
                std::task::Poll::Ready(Err(e)) => return Err(e),
                std::task::Poll::Pending => {}
            }
            if !self.write_buf.is_empty() {
                return Ok(false);
            }
        }
        // Even with nothing of ours left: TLS may hold what it took and could not send yet,
        // and only a flush sends it (nothing else will, once the client waits for it).
        match socket.poll_flush(&mut cx) {
            std::task::Poll::Ready(result) => result.map(|()| true),
            std::task::Poll::Pending => Ok(false),
        }
    }

    async fn write_pending(&mut self, limit: std::time::Duration) -> std::io::Result<()> {
        // Usually the socket takes it all at once.
        if self.write_now()? {
            return Ok(());
        }
        // A peer that stops reading must not pin this task forever.
        let rest = async {
            self.socket.write_all(&self.write_buf).await?;
            self.socket.flush().await
        };
        match tokio::time::timeout(limit, rest).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "peer stopped reading",
                ))
            }
        }
        self.write_buf.clear();
        Ok(())
    }

    /// Sends the answers so far plus an error for the framing failure, then ends.
    async fn fail(&mut self, error: CodecError) -> End {
        self.send_unsolicited(&error.to_message()).await;
        End::Framing(error)
    }

    /// Best effort: flush what is pending plus `message`, then shut the write side.
    async fn send_unsolicited(&mut self, message: &Message) {
        let style = self.codec.error_style();
        if self
            .codec
            .encode(Reply { message, style }, &mut self.write_buf)
            .is_ok()
        {
            let limit = std::time::Duration::from_secs(1);
            let _ = self.write_pending(limit).await;
        }
        let _ = self.socket.shutdown().await;
    }
}
