//! The heartbeat channels' own thread: every channel over plain TCP, once its handshake is
//! done on the management thread, is served here, on one `epoll` loop (`mio`) without a
//! task per channel.
//!
//! Why a thread of its own: at 10 000 nodes beating once a second, a channel served as a
//! tokio task on the management thread cost each heartbeat a wakeup, a task poll, hyper's
//! wrappers around the upgraded stream and the waits beside the read (the stop, the first
//! frame's timer): about half of the coordinator's CPU per heartbeat went to getting to the
//! frame. Here one `epoll_wait` returns the sockets that have something, each is read into
//! the thread's scratch buffer, and its frames are handled and answered on the spot. A
//! socket gets at most [`READS_PER_STEP`] reads at a time; one that still has more waits for
//! the next turn, after the others, so a peer that sends without pause cannot hold the thread.
//! And heartbeats no longer share a thread with `/ws` snapshots, dashboards and request
//! floods: whatever a client does to the management port, the channels' thread only reads
//! heartbeats (issue 14's "heartbeats first").
//!
//! Channels over TLS stay tokio tasks on the management thread (`super::serve`), and so does
//! a channel that could not be handed over; a frame means the same on either.
//!
//! While many nodes beat at their pace, the thread's turns last at least [`TURN`], as the
//! management thread's do ([`batching`] says why and when), so each `epoll_wait` returns
//! a hundred sockets rather than one or two.
//!
//! The thread also watches its own timeliness: it wakes at least every health sweep period,
//! and reports a wakeup late by more than scheduling noise to the sweeper, which forgives it
//! to every node ([`report_stall`]), since the heartbeats that waited
//! meanwhile were this thread's delay, not the nodes' silence.
//!
//! [`report_stall`]: crate::coordinator::health::tracker::HealthTracker::report_stall

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::socket::{Input, CLOSE_LINGER, READ_BUFFER, WRITE_TIMEOUT};
use super::{Channel, Core, Ending, MAX_HELD_BACK};
use crate::management::batching;
use crate::serve::HeldSlot;
use crate::wire::ws_frame::{self, close_code};

/// The token of the waker: a new channel, or the stop.
const WAKE: Token = Token(usize::MAX);

/// The most sockets one `epoll_wait` returns.
const EVENTS: usize = 1024;

/// The shortest turn of the thread while batching. Longer than the management thread's
/// [`batching::TURN`]: nothing but heartbeats waits for this thread, and a heartbeat that
/// waits up to 25 ms more is nothing to a 1 s interval or a 3 s STALE threshold. At 10 000
/// nodes, 10 ms turns cost ~0.8 µs less per heartbeat than 2 ms ones, and 25 ms ones ~0.4 µs
/// less again (fewer, fuller `epoll_wait`s and fewer sleeps; measured alternately).
pub const TURN: Duration = Duration::from_millis(25);

/// A turn that handled this many frames was busy enough: it is not lengthened.
const BURST: u64 = 1024;

/// The most reads of one socket in a row: a socket with more waiting is read again at the
/// next turn ([`Reactor::again`]).
const READS_PER_STEP: usize = 4;

/// The most a closed channel's peer may still send while the coordinator lingers for its
/// close; past it the socket is dropped.
const MAX_LINGER_BYTES: usize = 64 * 1024;

/// How often the thread wakes when nothing else wakes it: to catch its own stalls.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// A channel handed to the thread: its socket, out of the runtime, and what came with it.
#[derive(Debug)]
pub struct Arrival {
    pub stream: std::net::TcpStream,
    /// The connection's slot in the management listener's cap and the descriptor budget.
    pub slot: HeldSlot,
    /// Bytes the HTTP server read past the upgrade request: the first frames, if the peer
    /// did not wait for the `101`.
    pub early: Vec<u8>,
    pub channel: Channel,
    /// Its place under the channels' own cap.
    pub permit: OwnedSemaphorePermit,
}

/// Where channels are handed to the thread.
#[derive(Debug)]
pub struct Handle {
    arrivals: Sender<Arrival>,
    waker: Waker,
    /// Cleared when the thread ends, however it ends.
    running: Arc<AtomicBool>,
}

/// Clears [`Handle::running`] when the thread ends, a panic included.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Handle {
    /// Starts the thread for `core`'s channels; it ends once `core.stop` stops, after
    /// closing every channel (1001), and holds `tracked` until then.
    ///
    /// # Errors
    ///
    /// The `epoll` instance or the thread could not be made.
    pub fn start(core: Arc<Core>, tracked: TaskTrackerToken) -> io::Result<Handle> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let (arrivals, received) = mpsc::channel();
        let reactor = Reactor {
            core,
            poll,
            arrivals: received,
            channels: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            pace: Pace::new(),
        };
        let running = Arc::new(AtomicBool::new(true));
        let flag = Running(running.clone());
        std::thread::Builder::new()
            .name("colony-heartbeats".into())
            .spawn(move || {
                let _tracked = tracked;
                let _running = flag;
                reactor.run();
            })?;
        Ok(Handle {
            arrivals,
            waker,
            running,
        })
    }

    /// Whether the thread still serves channels: if it ended (it never should before the
    /// stop), new channels are served on the management thread instead.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Hands `arrival` to the thread; gives it back if the thread is gone.
    pub fn hand(&self, arrival: Arrival) -> Result<(), Box<Arrival>> {
        self.arrivals.send(arrival).map_err(|e| Box::new(e.0))?;
        // The thread drains its arrivals whenever it wakes: a failed wake only delays this
        // one until the next.
        let _ = self.waker.wake();
        Ok(())
    }

    /// Wakes the thread to look at the stop.
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// What a channel is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Closed by the coordinator: its close is (being) written, and what the peer still
    /// sends is read and dropped until it closes too or the linger ends.
    Lingering,
}

/// One channel on the thread.
#[derive(Debug)]
struct Served {
    stream: TcpStream,
    channel: Channel,
    input: Input,
    /// Answers not yet written.
    output: Vec<u8>,
    phase: Phase,
    /// Lingering, the write side was ended (after the close went out).
    shut: bool,
    /// Lingering, the bytes read and dropped so far.
    drained: usize,
    /// The socket said it was readable and has not been read empty since.
    readable: bool,
    /// The socket said the peer closed (or failed): a short read no longer means read
    /// empty, since no event will come for the end that follows the data.
    peer_closed: bool,
    /// Writable interest is registered: answers wait for room in the socket.
    waiting_to_write: bool,
    /// Set when the answers began to wait; cut after [`WRITE_TIMEOUT`].
    stuck_since: Option<Instant>,
    /// Told apart from an earlier channel in the same place, for timers.
    generation: u64,
    _slot: HeldSlot,
    _permit: OwnedSemaphorePermit,
}

/// What happens to a channel after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Keep,
    /// Closed by the coordinator: linger.
    Linger,
    /// Gone: drop it.
    Drop,
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// The first frame's deadline ([`super::ChannelLimits::first_frame`]).
    FirstFrame,
    /// The answers' write deadline.
    Write,
    /// The end of the linger.
    LingerEnd,
}

/// A timer: when, which channel (place and generation), what for.
type Timer = Reverse<(Instant, usize, u64, Due)>;

struct Reactor {
    core: Arc<Core>,
    poll: Poll,
    arrivals: Receiver<Arrival>,
    /// Channels by token.
    channels: Vec<Option<Served>>,
    /// Free places in `channels`.
    free: Vec<usize>,
    /// Deadlines; a timer whose channel has gone (or moved on) is skipped when it is due.
    timers: BinaryHeap<Timer>,
    /// Channels that had more to read when their step's reads ran out, by place and
    /// generation: read first at the next turn, which does not wait for events meanwhile
    /// (edge-triggered `epoll` will not report them again).
    again: Vec<(usize, u64)>,
    pace: Pace,
}

impl Reactor {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        let health = self.core.health.clone();
        let watch_every = health
            .as_ref()
            .map_or(MAX_SLEEP, |h| h.config().sweep_period().min(MAX_SLEEP));
        let mut watch_due = Instant::now() + watch_every;
        let mut generation = 0u64;
        loop {
            let now = Instant::now();
            let next = self
                .timers
                .peek()
                .map_or(watch_due, |Reverse((at, ..))| (*at).min(watch_due));
            let timeout = if self.again.is_empty() {
                next.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "heartbeat channels' epoll failed; their channels close");
                self.close_all(close_code::INTERNAL, "heartbeat thread failed");
                return;
            }
            let turn = Instant::now();
            let mut frames = 0u64;
            for (place, generation) in std::mem::take(&mut self.again) {
                let Some(Some(served)) = self.channels.get_mut(place) else {
                    continue;
                };
                if served.generation == generation {
                    let after = served.step(&mut frames);
                    self.settle(place, after);
                }
            }
            for event in events.iter() {
                if event.token() == WAKE {
                    continue;
                }
                let place = event.token().0;
                let Some(Some(served)) = self.channels.get_mut(place) else {
                    continue;
                };
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    served.readable = true;
                }
                if event.is_read_closed() || event.is_error() {
                    served.peer_closed = true;
                }
                let after = served.step(&mut frames);
                self.settle(place, after);
            }
            if self.core.stop.is_stopped() {
                self.close_all(close_code::AWAY, "coordinator stopping");
                return;
            }
            while let Ok(arrival) = self.arrivals.try_recv() {
                generation += 1;
                self.admit(arrival, generation, &mut frames);
            }
            self.fire_timers(Instant::now());
            let now = Instant::now();
            if now >= watch_due {
                if let Some(health) = &health {
                    health.report_stall(now.saturating_duration_since(watch_due));
                }
                watch_due = now + watch_every;
            }
            let open = self.channels.len() - self.free.len();
            if let Some(rest) = self.pace.turn(turn, frames, open, &self.core) {
                // Deliberately blocking, as on the management thread: the frames arriving
                // meanwhile are read in one go at the next turn. Never past the next watch:
                // the turn's own pause is not a stall to forgive the nodes.
                std::thread::sleep(rest.min(watch_due.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Registers a new channel and handles what came with it.
    fn admit(&mut self, arrival: Arrival, generation: u64, frames: &mut u64) {
        let mut stream = TcpStream::from_std(arrival.stream);
        let place = self.free.pop().unwrap_or(self.channels.len());
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(place), Interest::READABLE)
        {
            tracing::warn!(error = %e, "heartbeat channel could not be watched; closed");
            // Dropping `arrival.channel` ends it as a channel that closed.
            if place < self.channels.len() {
                self.free.push(place);
            }
            return;
        }
        let max_frame = self.core.limits.max_frame;
        let served = Served {
            stream,
            channel: arrival.channel,
            input: Input::starting_with(max_frame, arrival.early),
            output: Vec::new(),
            phase: Phase::Open,
            shut: false,
            drained: 0,
            // Edge-triggered: whatever is already waiting raised no event for this
            // registration, so the first step reads.
            readable: true,
            peer_closed: false,
            waiting_to_write: false,
            stuck_since: None,
            generation,
            _slot: arrival.slot,
            _permit: arrival.permit,
        };
        if place == self.channels.len() {
            self.channels.push(Some(served));
        } else {
            self.channels[place] = Some(served);
        }
        let first_frame = Instant::now() + self.core.limits.first_frame;
        self.timers
            .push(Reverse((first_frame, place, generation, Due::FirstFrame)));
        let after = match self.channels[place].as_mut() {
            Some(served) => served.step(frames),
            None => After::Drop,
        };
        self.settle(place, after);
    }

    /// Acts on what a step of the channel at `place` said.
    fn settle(&mut self, place: usize, after: After) {
        let Some(served) = self.channels[place].as_mut() else {
            return;
        };
        match after {
            After::Keep => {
                let wants_write = !served.output.is_empty();
                if wants_write != served.waiting_to_write {
                    let interest = if wants_write {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if self
                        .poll
                        .registry()
                        .reregister(&mut served.stream, Token(place), interest)
                        .is_err()
                    {
                        self.remove(place);
                        return;
                    }
                    served.waiting_to_write = wants_write;
                }
                if served.readable && served.output.len() < MAX_HELD_BACK {
                    // Its reads ran out with more waiting.
                    self.again.push((place, served.generation));
                }
                if wants_write && served.stuck_since.is_none() {
                    let now = Instant::now();
                    served.stuck_since = Some(now);
                    let timer = (now + WRITE_TIMEOUT, place, served.generation, Due::Write);
                    self.timers.push(Reverse(timer));
                } else if !wants_write {
                    served.stuck_since = None;
                }
            }
            After::Linger => {
                if served.phase == Phase::Lingering {
                    return self.settle(place, After::Keep);
                }
                served.phase = Phase::Lingering;
                served.channel.closed();
                let timer = (
                    Instant::now() + CLOSE_LINGER,
                    place,
                    served.generation,
                    Due::LingerEnd,
                );
                self.timers.push(Reverse(timer));
                // What the peer sent meanwhile is read (and dropped) now.
                let after = served.step(&mut 0);
                if after == After::Drop {
                    self.remove(place);
                } else {
                    self.settle(place, After::Keep);
                }
            }
            After::Drop => self.remove(place),
        }
    }

    /// Drops the channel at `place`: its socket closes, its slot and permit are given back.
    fn remove(&mut self, place: usize) {
        if let Some(mut served) = self.channels[place].take() {
            let _ = self.poll.registry().deregister(&mut served.stream);
            if served.phase == Phase::Open {
                served.channel.closed();
            }
            self.free.push(place);
        }
    }

    /// Handles every timer due by `now`.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, place, generation, due))) = self.timers.peek().copied() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(Some(served)) = self.channels.get_mut(place) else {
                continue;
            };
            if served.generation != generation {
                continue;
            }
            match due {
                Due::FirstFrame if served.phase == Phase::Open && !served.channel.is_bound() => {
                    tracing::debug!("heartbeat channel closed: no accepted heartbeat in time");
                    ws_frame::encode_close(
                        &mut served.output,
                        close_code::POLICY,
                        "no accepted heartbeat in time",
                    );
                    served.write_out();
                    self.settle(place, After::Linger);
                }
                Due::Write if served.stuck_since.is_some_and(|s| s + WRITE_TIMEOUT <= now) => {
                    tracing::debug!("heartbeat channel closed: the peer took no answer in time");
                    self.remove(place);
                }
                Due::LingerEnd => self.remove(place),
                _ => {}
            }
        }
    }

    /// The thread ends (the coordinator stops): every open channel, and every one handed
    /// over meanwhile, gets a close with `code`, written if the socket takes it now, and
    /// every socket is closed.
    fn close_all(&mut self, code: u16, reason: &str) {
        for place in 0..self.channels.len() {
            if let Some(served) = self.channels[place].as_mut() {
                if served.phase == Phase::Open {
                    ws_frame::encode_close(&mut served.output, code, reason);
                    served.write_out();
                }
            }
            self.remove(place);
        }
        let mut close = Vec::new();
        ws_frame::encode_close(&mut close, code, reason);
        while let Ok(arrival) = self.arrivals.try_recv() {
            // Non-blocking: a close that does not fit now is not waited for.
            let _ = (&arrival.stream).write(&close);
        }
    }
}

impl Served {
    /// Reads what is waiting (unless answers are held back), handles its frames and writes
    /// their answers; or, lingering, reads and drops.
    fn step(&mut self, frames: &mut u64) -> After {
        if self.phase == Phase::Lingering {
            return self.drain();
        }
        let mut reads = 0;
        loop {
            // Whatever is already decodable (the early bytes, or a read's) goes first.
            if let Some(after) = self.handle_frames(frames) {
                return after;
            }
            if self.output.len() >= MAX_HELD_BACK {
                // A peer that does not read its answers is not read either until it does.
                if !self.write_out() {
                    return After::Drop;
                }
                if self.output.len() >= MAX_HELD_BACK {
                    self.input.release();
                    return After::Keep;
                }
            }
            if !self.readable || reads == READS_PER_STEP {
                break;
            }
            reads += 1;
            match self.input.read_from(&mut self.stream) {
                Ok((0, _)) => {
                    self.input.release();
                    let _ = self.write_out();
                    return After::Drop;
                }
                // A read that did not fill the buffer took all there was: more data brings
                // another edge, but a close that came with the data brings none.
                Ok((_, filled)) => self.readable = filled || self.peer_closed,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return After::Drop,
            }
        }
        self.input.release();
        if self.write_out() {
            After::Keep
        } else {
            After::Drop
        }
    }

    /// Handles every complete frame read; `Some` when the channel ends.
    fn handle_frames(&mut self, frames: &mut u64) -> Option<After> {
        let ending = self
            .channel
            .on_input(&mut self.input, &mut self.output, frames)?;
        self.input.release();
        self.write_out();
        Some(match ending {
            Ending::ClosedByUs => After::Linger,
            Ending::Done => After::Drop,
        })
    }

    /// Lingering: finishes writing the close and ends the write side, then reads and drops
    /// what the peer sends; [`After::Drop`] once it closed.
    fn drain(&mut self) -> After {
        if !self.write_out() {
            return After::Drop;
        }
        if self.output.is_empty() && !self.shut {
            self.shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        let mut sink = [0u8; READ_BUFFER];
        for _ in 0..READS_PER_STEP {
            match self.stream.read(&mut sink) {
                Ok(0) => return After::Drop,
                Ok(read) => {
                    self.drained += read;
                    if self.drained > MAX_LINGER_BYTES {
                        return After::Drop;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return After::Keep;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return After::Drop,
            }
        }
        // More may be waiting: read again at the next turn.
        self.readable = true;
        After::Keep
    }

    /// Writes what the socket takes of the answers; false if the socket failed.
    fn write_out(&mut self) -> bool {
        let mut written = 0;
        while written < self.output.len() {
            match self.stream.write(&self.output[written..]) {
                Ok(0) => return false,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.output.drain(..written);
        if self.output.is_empty() && self.output.capacity() > READ_BUFFER {
            // A burst of refusals does not stay allocated on an idle channel.
            self.output = Vec::new();
        }
        true
    }
}

/// The batching of the thread's turns ([`batching`]): looked at once per
/// [`batching::WINDOW`].
#[derive(Debug)]
struct Pace {
    window: Instant,
    frames: u64,
    batching: bool,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            window: Instant::now(),
            frames: 0,
            batching: false,
        }
    }

    /// After a turn that began at `turn` and handled `frames` with `open` channels: how much
    /// longer it should last, if at all. Each lengthened turn is counted.
    fn turn(&mut self, turn: Instant, frames: u64, open: usize, core: &Core) -> Option<Duration> {
        self.frames += frames;
        let now = Instant::now();
        if now.saturating_duration_since(self.window) >= batching::WINDOW {
            let open = u64::try_from(open).unwrap_or(u64::MAX);
            let batching = batching::worth_batching(self.frames, open);
            if batching != self.batching {
                tracing::debug!(batching, "heartbeat channels' turns batched: {batching}");
            }
            self.batching = batching;
            self.window = now;
            self.frames = 0;
        }
        if !self.batching {
            return None;
        }
        let took = now.saturating_duration_since(turn);
        if frames >= BURST || took >= TURN {
            return None;
        }
        let rest = TURN - took;
        core.batched.inc();
        Some(rest)
    }
}
