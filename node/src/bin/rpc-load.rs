//! rpc-load: a loopback load generator that measures how many `find_node` requests per second
//! one DHT node answers (dht-node or the Python `kademlia` package's own node: it speaks the
//! wire protocol only, so it can load either).
//!
//! The run: wait until the node answers a ping; put `--seed-contacts` contacts in its routing
//! table with real pings, each from its own socket with a node id drawn from `--contact-seed`
//! (so every node measured gets the same ids), and keep answering the node's pings on those
//! sockets; then one closed-loop step per `--outstanding` value: `--sockets` sockets, each with
//! its own node id, keep their share of the requests outstanding (an answer releases the next
//! request, a request unanswered after `--loss-timeout-ms` is counted lost and replaced), every
//! request asks for a random key. Valid answers (a matching message id and a non-empty contact
//! list) are counted per second of the step, next to the CPU seconds that `--server-pid` used
//! in the same step (from /proc/PID/stat), which gives answers per CPU-second: per core.
//!
//! Prints one JSON document on stdout (the steps and the best of them) and a line per step on
//! stderr. Only 127.0.0.0/8 targets are accepted. Exit 1 when the node never answers a ping.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use kadscale_node::codec::{
    decode_datagram, encode_request, encode_response, find_node_answer, ping_answer, Datagram,
    MessageId, Request, Response,
};
use kadscale_node::id::NodeId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Answers the first step's answers are examined for distinct contacts: enough to see the
/// routing table, few enough that the bookkeeping does not slow the generator down.
const CONTACT_SAMPLE_ANSWERS: u64 = 2_000;
/// Requests a socket sends at once at the start of a step or after losses; the window then
/// grows by one with every answer. A whole window sent at once would overflow the node's
/// receive buffer (about 130 find_node datagrams by default) and measure losses, not answers.
const BURST: usize = 4;
/// How often requests unanswered for longer than the loss timeout are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(20);
/// Longest wait for the node to answer every contact's ping before the first step.
const SEEDING_TIME: Duration = Duration::from_secs(3);
/// After a step, answers still in flight are awaited this long so they do not leak into the
/// next step as unmatched.
const DRAIN_TIME: Duration = Duration::from_millis(300);

#[derive(Parser)]
#[command(about = "Loopback find_node load generator for one DHT node (127.0.0.0/8 only)")]
struct Args {
    /// The node to load, host:port on 127.0.0.0/8.
    #[arg(long)]
    target: SocketAddr,
    /// Contacts put in the node's routing table before the load, each by a real ping from its
    /// own socket; those sockets answer the node's pings until the run ends.
    #[arg(long, default_value_t = 200)]
    seed_contacts: usize,
    /// Seed of the contacts' node ids: the same seed gives every node measured the same ids.
    #[arg(long, default_value_t = 1)]
    contact_seed: u64,
    /// Sockets the load comes from, each with its own node id, so that what the node does per
    /// source is not what limits the rate.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Requests kept outstanding over all sockets, one load step per value, in order.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    outstanding: Vec<usize>,
    /// Seconds each step lasts.
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    /// The node's process id: its CPU time (user + system) is measured per step.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds to wait for the node's first ping answer.
    #[arg(long, default_value_t = 10.0)]
    ready_timeout_secs: f64,
    /// A request unanswered after this many milliseconds counts as lost and is replaced.
    #[arg(long, default_value_t = 1000)]
    loss_timeout_ms: u64,
    /// A name for the node in the output ("dht-node", "python").
    #[arg(long, default_value = "node")]
    label: String,
}

/// What the load sockets saw during one step.
#[derive(Default)]
struct Counts {
    answers: u64,
    malformed: u64,
    unmatched: u64,
    lost: u64,
    pings_answered: u64,
    contacts_seen: HashSet<NodeId>,
}

/// A socket with the node id it claims as sender.
struct Source {
    socket: UdpSocket,
    id: NodeId,
}

impl Source {
    fn bind(id: NodeId) -> io::Result<Source> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        Ok(Source { socket, id })
    }

    fn send_request(&self, target: SocketAddr, request: &Request, rng: &mut SmallRng) -> MessageId {
        let id: MessageId = rng.random();
        // Loopback sends fail only when the receiver's buffer is full; that request then
        // counts as lost after the loss timeout, like a dropped datagram.
        let _ = self.socket.send_to(&encode_request(&id, request), target);
        id
    }

    /// Answers a ping from `from` with this source's id (the node checks full buckets so).
    fn answer_ping(&self, id: &MessageId, from: SocketAddr) {
        let _ = self.socket.send_to(&encode_response(id, &Response::Ping(self.id)), from);
    }
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => println!("{report:#}"),
        Err(error) => {
            eprintln!("rpc-load: {error:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    if !args.target.ip().is_loopback() {
        bail!("--target {} is not a loopback address (127.0.0.0/8)", args.target);
    }
    if args.sockets == 0 {
        bail!("--sockets must be at least 1");
    }
    if let Some(&too_few) = args.outstanding.iter().find(|&&window| window < args.sockets) {
        bail!(
            "--outstanding {too_few} is below --sockets {}: every socket needs one",
            args.sockets
        );
    }
    if !(args.step_secs.is_finite() && args.step_secs > 0.0 && args.step_secs < 3600.0) {
        bail!("--step-secs {} is not a number of seconds between 0 and 3600", args.step_secs);
    }
    let mut rng = SmallRng::from_os_rng();
    let sources = (0..args.sockets)
        .map(|_| Source::bind(NodeId(rng.random())))
        .collect::<io::Result<Vec<_>>>()
        .context("binding the load sockets on 127.0.0.1")?;
    let ready_in = wait_until_answering(&sources[0], args.target, args.ready_timeout_secs)?;
    eprintln!("{}: {} answers pings ({ready_in:?} to ready)", args.label, args.target);

    let mut contact_rng = SmallRng::seed_from_u64(args.contact_seed);
    let contacts = (0..args.seed_contacts)
        .map(|_| Source::bind(NodeId(contact_rng.random())))
        .collect::<io::Result<Vec<_>>>()
        .context("binding the contact sockets on 127.0.0.1")?;
    // Non-blocking: one thread sweeps every contact socket.
    for contact in &contacts {
        contact.socket.set_nonblocking(true).context("making a contact socket non-blocking")?;
    }
    let stop = AtomicBool::new(false);
    let seeded = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let responder = scope.spawn(|| seed_and_answer(&contacts, args.target, &seeded, &stop));
        let seeding_started = Instant::now();
        while seeded.load(Ordering::SeqCst) < contacts.len()
            && seeding_started.elapsed() < SEEDING_TIME
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let steps = run_steps(args, &sources);
        stop.store(true, Ordering::SeqCst);
        let seed_pings_answered = responder.join().expect("the responder thread ended");
        let steps = steps?;
        let best = steps.iter().max_by(|a, b| rate_of(a).total_cmp(&rate_of(b))).cloned();
        Ok(json!({
            "label": args.label,
            "target": args.target.to_string(),
            "seed_contacts": args.seed_contacts,
            "seed_contacts_answered": seeded.load(Ordering::SeqCst),
            "pings_from_node_answered_by_contacts": seed_pings_answered,
            "sockets": args.sockets,
            "step_seconds": args.step_secs,
            "steps": steps,
            "best": best,
        }))
    })
}

fn rate_of(step: &serde_json::Value) -> f64 {
    step["answers_per_second"].as_f64().unwrap_or(0.0)
}

/// User + system CPU seconds a process has used so far (fields 14 and 15 of /proc/PID/stat).
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("no ')' in stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize, name: &str| -> anyhow::Result<f64> {
        let field = fields.get(index).with_context(|| format!("{path}: no {name} field"))?;
        field.parse::<f64>().with_context(|| format!("{path}: {name} {field:?} is not a number"))
    };
    // Fields 3.. follow the name, so utime (14) and stime (15) are at 11 and 12.
    // SAFETY: sysconf reads a constant of the running system; it has no memory effects.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11, "utime")? + ticks(12, "stime")?) / ticks_per_second)
}

/// Pings from `source` every 200 ms until an answer comes back; the time it took.
fn wait_until_answering(
    source: &Source,
    target: SocketAddr,
    timeout_secs: f64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut rng = SmallRng::from_os_rng();
    source.socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buffer = [0u8; 2048];
    while started.elapsed().as_secs_f64() < timeout_secs {
        let id = source.send_request(target, &Request::Ping { sender: source.id }, &mut rng);
        if let Ok((len, from)) = source.socket.recv_from(&mut buffer) {
            if let Ok(Datagram::Response { id: answered, body }) = decode_datagram(&buffer[..len]) {
                if answered == id && from == target && ping_answer(body).is_ok() {
                    return Ok(started.elapsed());
                }
            }
        }
    }
    bail!("{target} answered no ping within {timeout_secs} s")
}

/// Pings the node once from every contact socket (again every second until it answered), and
/// answers the node's pings on them until `stop`. Counts the contacts whose ping the node
/// answered in `seeded`; returns the pings answered on the node's behalf.
fn seed_and_answer(
    contacts: &[Source],
    target: SocketAddr,
    seeded_count: &AtomicUsize,
    stop: &AtomicBool,
) -> u64 {
    let mut rng = SmallRng::from_os_rng();
    let mut awaiting: HashMap<usize, MessageId> = HashMap::new();
    let mut last_sent = Instant::now() - Duration::from_secs(1);
    let mut pings_answered = 0;
    let mut buffer = [0u8; 2048];
    let mut seeded: HashSet<usize> = HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        if seeded.len() < contacts.len() && last_sent.elapsed() >= Duration::from_secs(1) {
            for (index, contact) in contacts.iter().enumerate().filter(|(i, _)| !seeded.contains(i))
            {
                let ping = Request::Ping { sender: contact.id };
                awaiting.insert(index, contact.send_request(target, &ping, &mut rng));
            }
            last_sent = Instant::now();
        }
        let mut idle = true;
        for (index, contact) in contacts.iter().enumerate() {
            while let Ok((len, from)) = contact.socket.recv_from(&mut buffer) {
                idle = false;
                match decode_datagram(&buffer[..len]) {
                    Ok(Datagram::Request { id, request: Request::Ping { .. } }) => {
                        contact.answer_ping(&id, from);
                        pings_answered += 1;
                    }
                    Ok(Datagram::Response { id, .. }) if awaiting.get(&index) == Some(&id) => {
                        seeded.insert(index);
                        seeded_count.store(seeded.len(), Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    pings_answered
}

/// One closed-loop step per `--outstanding` value, all sockets at once; a JSON object each.
fn run_steps(args: &Args, sources: &[Source]) -> anyhow::Result<Vec<serde_json::Value>> {
    let step = Duration::from_secs_f64(args.step_secs);
    let loss_timeout = Duration::from_millis(args.loss_timeout_ms);
    let mut steps = Vec::new();
    for (index, &outstanding) in args.outstanding.iter().enumerate() {
        let cpu_before = args.server_pid.map(process_cpu_seconds).transpose()?;
        let started = Instant::now();
        let deadline = started + step;
        let sample_contacts = index == 0;
        let windows = sources.iter().enumerate().map(|(i, _)| {
            // The window is spread over the sockets; the first ones take the remainder.
            outstanding / sources.len() + usize::from(i < outstanding % sources.len())
        });
        let mut lanes: Vec<Lane> = sources.iter().zip(windows).map(Lane::new).collect();
        let counts = drive(&mut lanes, args.target, deadline, loss_timeout, sample_contacts)?;
        let seconds = step.as_secs_f64();
        let cpu_after = args.server_pid.map(process_cpu_seconds).transpose()?;
        drain(&mut lanes);
        let server_cpu = cpu_before.zip(cpu_after).map(|(before, after)| after - before);
        let per_second = counts.answers as f64 / seconds;
        let per_cpu_second =
            server_cpu.filter(|&cpu| cpu > 0.0).map(|cpu| counts.answers as f64 / cpu);
        eprintln!(
            "{}: outstanding {outstanding:>4}: {per_second:>10.0} answers/s, server CPU {} s, {} answers per CPU-second, lost {}, malformed {}",
            args.label,
            server_cpu.map_or("-".into(), |cpu| format!("{cpu:.2}")),
            per_cpu_second.map_or("-".into(), |rate| format!("{rate:.0}")),
            counts.lost,
            counts.malformed,
        );
        let mut step_report = json!({
            "outstanding": outstanding,
            "seconds": seconds,
            "answers": counts.answers,
            "answers_per_second": per_second,
            "server_cpu_seconds": server_cpu,
            "answers_per_cpu_second": per_cpu_second,
            "lost": counts.lost,
            "malformed": counts.malformed,
            "unmatched": counts.unmatched,
            "pings_answered": counts.pings_answered,
        });
        if sample_contacts {
            step_report["distinct_contacts_in_answers"] = json!(counts.contacts_seen.len());
        }
        steps.push(step_report);
    }
    Ok(steps)
}

/// One load socket's share of a step: its window and the requests it has outstanding.
struct Lane<'a> {
    source: &'a Source,
    window: usize,
    outstanding: HashMap<MessageId, Instant>,
}

impl<'a> Lane<'a> {
    fn new((source, window): (&'a Source, usize)) -> Lane<'a> {
        Lane { source, window, outstanding: HashMap::with_capacity(window * 2) }
    }

    fn send_one(&mut self, target: SocketAddr, rng: &mut SmallRng) {
        let request = Request::FindNode { sender: self.source.id, key: NodeId(rng.random()) };
        self.outstanding.insert(self.source.send_request(target, &request, rng), Instant::now());
    }
}

/// The closed loop of every lane until `deadline`.
/// One thread polls every socket without blocking: a generator blocked in `recv` would make
/// the node pay for waking it up on every answer it sends, a cost no remote client imposes.
fn drive(
    lanes: &mut [Lane],
    target: SocketAddr,
    deadline: Instant,
    loss_timeout: Duration,
    sample_contacts: bool,
) -> io::Result<Counts> {
    let mut rng = SmallRng::from_os_rng();
    let mut counts = Counts::default();
    let mut buffer = [0u8; 65536];
    for lane in lanes.iter_mut() {
        lane.source.socket.set_nonblocking(true)?;
        while lane.outstanding.len() < lane.window.min(BURST) {
            lane.send_one(target, &mut rng);
        }
    }
    let mut last_sweep = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now.duration_since(last_sweep) >= SWEEP_INTERVAL {
            for lane in lanes.iter_mut() {
                let before = lane.outstanding.len();
                lane.outstanding.retain(|_, sent| now.duration_since(*sent) < loss_timeout);
                let expired = before - lane.outstanding.len();
                counts.lost += expired as u64;
                for _ in 0..expired.min(BURST) {
                    lane.send_one(target, &mut rng);
                }
            }
            last_sweep = now;
        }
        for lane in lanes.iter_mut() {
            while let Ok((len, from)) = lane.source.socket.recv_from(&mut buffer) {
                let answered = classify(
                    lane.source,
                    target,
                    &buffer[..len],
                    from,
                    &mut lane.outstanding,
                    &mut counts,
                    sample_contacts,
                );
                if answered.is_some() {
                    // Each answer releases its successor, and one more while the window is
                    // not full.
                    lane.send_one(target, &mut rng);
                    if lane.outstanding.len() < lane.window {
                        lane.send_one(target, &mut rng);
                    }
                }
            }
        }
    }
    Ok(counts)
}

/// Waits for the answers still in flight, so that they do not count in the next step.
fn drain(lanes: &mut [Lane]) {
    let mut buffer = [0u8; 65536];
    let drain_until = Instant::now() + DRAIN_TIME;
    while lanes.iter().any(|lane| !lane.outstanding.is_empty()) && Instant::now() < drain_until {
        for lane in lanes.iter_mut() {
            while let Ok((len, _)) = lane.source.socket.recv_from(&mut buffer) {
                if let Ok(Datagram::Response { id, .. }) = decode_datagram(&buffer[..len]) {
                    lane.outstanding.remove(&id);
                }
            }
        }
    }
}

/// Counts one received datagram; `Some` when it answered an outstanding request (valid or
/// not), which frees a place in the window.
fn classify(
    source: &Source,
    target: SocketAddr,
    datagram: &[u8],
    from: SocketAddr,
    outstanding: &mut HashMap<MessageId, Instant>,
    counts: &mut Counts,
    sample_contacts: bool,
) -> Option<()> {
    match decode_datagram(datagram) {
        Ok(Datagram::Response { id, body }) => {
            if from != target || outstanding.remove(&id).is_none() {
                counts.unmatched += 1;
                return None;
            }
            match find_node_answer(body) {
                Ok(contacts) if !contacts.is_empty() => {
                    counts.answers += 1;
                    if sample_contacts && counts.answers <= CONTACT_SAMPLE_ANSWERS {
                        counts.contacts_seen.extend(contacts.iter().map(|contact| contact.id));
                    }
                }
                _ => counts.malformed += 1,
            }
            Some(())
        }
        Ok(Datagram::Request { id, request: Request::Ping { .. } }) => {
            source.answer_ping(&id, from);
            counts.pings_answered += 1;
            None
        }
        Ok(Datagram::Request { .. }) => None,
        Err(_) => {
            counts.malformed += 1;
            None
        }
    }
}
