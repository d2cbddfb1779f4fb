//! A loopback HTTP proxy between the vault's S3 client and s3s-fs that injects faults: the
//! server down (connections refused), a reset connection, `500 InternalError`, `503 SlowDown`,
//! a server that accepts and never answers, and a connection cut halfway through a request's
//! body (or a response's). Std threads only. It also records every request it sees (method,
//! target, headers) so tests can check what the client sends.
//!
//! Each request goes upstream on a connection of its own (`Connection: close` is added, which
//! SigV4 does not sign), so every request the client makes is one connection here and is
//! counted exactly once.
//!
//! "Down" closes the listening socket; a second socket, bound to the same port with
//! `SO_REUSEPORT` and never listening, keeps the port reserved meanwhile, so connections are
//! refused (not answered by some other test's server that picked the port) and the proxy can
//! listen on it again.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// What the proxy does instead of passing a request on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing listens: connections are refused (only with [`Proxy::set`], not counted).
    Down,
    /// The connection is closed as soon as the request's head is read.
    Reset,
    /// `500 Internal Server Error` with S3's `InternalError` body.
    InternalError,
    /// `503 Slow Down` with S3's `SlowDown` body.
    SlowDown,
    /// The request is read and never answered; the connection stays open.
    Stall,
    /// Half of the request body is passed on to the server, then both connections are closed
    /// (a request without a body: half of the server's answer reaches the client).
    Cut,
}

/// A request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The request target (path and query).
    pub target: String,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The fault it met, if any.
    pub fault: Option<Fault>,
}

#[derive(Default)]
struct Ctl {
    /// The fault now in force.
    fault: Option<Fault>,
    /// How many more requests meet it (`None`: all).
    remaining: Option<usize>,
    /// How many requests pass before it applies.
    pass_first: usize,
    /// The listener is wanted closed.
    down: bool,
    /// The listener is open.
    listening: bool,
    /// Why the listener could not be opened again.
    broken: Option<String>,
    quit: bool,
}

struct State {
    addr: SocketAddr,
    upstream: SocketAddr,
    ctl: Mutex<Ctl>,
    cv: Condvar,
    requests: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// The proxy; stopped on drop.
pub struct Proxy {
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
    /// Holds the port while the listener is closed.
    _anchor: socket2::Socket,
}

fn reuse_port_socket() -> socket2::Socket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    s.set_reuse_port(true).expect("SO_REUSEPORT");
    s
}

/// A listener on `addr`, sharing the port with the anchor.
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = reuse_port_socket();
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream`, passing everything on.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let anchor = reuse_port_socket();
        anchor
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind the proxy's port");
        let addr = anchor
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("proxy address");
        let listener = listen_on(addr).expect("listen on the proxy's port");
        let state = Arc::new(State {
            addr,
            upstream,
            ctl: Mutex::new(Ctl {
                listening: true,
                ..Ctl::default()
            }),
            cv: Condvar::new(),
            requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || accept_loop(st, listener));
        Proxy {
            state,
            accept: Some(accept),
            _anchor: anchor,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// Every request from now on meets `fault` (until [`Proxy::clear`]).
    pub fn set(&self, fault: Fault) {
        self.configure(Some(fault), None, 0);
    }

    /// The next `n` requests meet `fault`, later ones pass.
    pub fn fail_first(&self, n: usize, fault: Fault) {
        assert_ne!(fault, Fault::Down, "refused connections cannot be counted");
        self.configure(Some(fault), Some(n), 0);
    }

    /// The next `n` requests pass, every later one meets `fault` (until [`Proxy::clear`]).
    pub fn fail_after(&self, n: usize, fault: Fault) {
        assert_ne!(fault, Fault::Down, "refused connections cannot be counted");
        self.configure(Some(fault), None, n);
    }

    /// Everything passes again.
    pub fn clear(&self) {
        self.configure(None, None, 0);
    }

    fn configure(&self, fault: Option<Fault>, remaining: Option<usize>, pass_first: usize) {
        let down = fault == Some(Fault::Down);
        let mut c = self.state.ctl.lock().unwrap();
        c.fault = fault;
        c.remaining = remaining;
        c.pass_first = pass_first;
        c.down = down;
        self.state.cv.notify_all();
        if down && c.listening {
            drop(c);
            // Wake the accept loop, which then closes the listener.
            let _ = TcpStream::connect(self.state.addr);
            c = self.state.ctl.lock().unwrap();
        }
        while c.listening == down {
            if let Some(why) = &c.broken {
                panic!("proxy: {why}");
            }
            if self.accept.as_ref().is_none_or(|t| t.is_finished()) {
                panic!("proxy: the accept loop ended");
            }
            c = self
                .state
                .cv
                .wait_timeout(c, std::time::Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    /// Requests seen so far (refused connections are not requests).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut c = self.state.ctl.lock().unwrap();
            c.quit = true;
            c.down = false;
            self.state.cv.notify_all();
        }
        let _ = TcpStream::connect(self.state.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(state: Arc<State>, first: TcpListener) {
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => {
                // Down: wait to be brought back up, then listen on the same port again.
                let mut c = state.ctl.lock().unwrap();
                while c.down && !c.quit {
                    c = state.cv.wait(c).unwrap();
                }
                if c.quit {
                    return;
                }
                match listen_on(state.addr) {
                    Ok(l) => {
                        c.listening = true;
                        state.cv.notify_all();
                        l
                    }
                    Err(e) => {
                        c.broken = Some(format!("cannot listen on {} again: {e}", state.addr));
                        state.cv.notify_all();
                        return;
                    }
                }
            }
        };
        for conn in l.incoming() {
            {
                let c = state.ctl.lock().unwrap();
                if c.quit {
                    return;
                }
                if c.down {
                    break;
                }
            }
            if let Ok(conn) = conn {
                let st = state.clone();
                std::thread::spawn(move || handle(&st, conn));
            }
        }
        drop(l);
        let mut c = state.ctl.lock().unwrap();
        c.listening = false;
        state.cv.notify_all();
    }
}

const INTERNAL_ERROR: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>";
const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

/// Reads up to the end of the head; returns the head and what was read past it.
fn read_head(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((buf, rest));
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn handle(state: &State, mut conn: TcpStream) {
    let Some((head, rest)) = read_head(&mut conn) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body_len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    state.requests.fetch_add(1, Ordering::SeqCst);
    let fault = {
        let mut c = state.ctl.lock().unwrap();
        if c.fault.is_some() && c.pass_first > 0 {
            c.pass_first -= 1;
            None
        } else {
            match (c.fault, c.remaining) {
                (Some(f), None) => Some(f),
                (Some(f), Some(n)) if n > 0 => {
                    c.remaining = Some(n - 1);
                    Some(f)
                }
                _ => None,
            }
        }
    };
    state.seen.lock().unwrap().push(Seen {
        method,
        target,
        headers: headers.clone(),
        fault,
    });
    // The head passed on: hop-by-hop headers replaced by `Connection: close`.
    let mut up_head = String::new();
    for (i, line) in text.trim_end_matches("\r\n").split("\r\n").enumerate() {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0 && (name == "connection" || name == "keep-alive") {
            continue;
        }
        up_head.push_str(line);
        up_head.push_str("\r\n");
    }
    up_head.push_str("Connection: close\r\n\r\n");

    let read_body = |conn: &mut TcpStream, mut have: Vec<u8>| -> Vec<u8> {
        let mut chunk = [0u8; 65536];
        while have.len() < body_len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => have.extend_from_slice(&chunk[..n]),
            }
        }
        have
    };
    match fault {
        None | Some(Fault::Down) => forward(state, conn, up_head.as_bytes(), &rest),
        Some(Fault::Reset) => drop(conn),
        Some(f @ (Fault::InternalError | Fault::SlowDown)) => {
            let _ = read_body(&mut conn, rest);
            let (status, body) = if f == Fault::InternalError {
                ("500 Internal Server Error", INTERNAL_ERROR)
            } else {
                ("503 Slow Down", SLOW_DOWN)
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.flush();
            let _ = conn.shutdown(Shutdown::Both);
        }
        Some(Fault::Stall) => {
            // Take whatever comes, answer nothing, until the client gives up.
            let mut sink = [0u8; 65536];
            while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
        }
        Some(Fault::Cut) if body_len > 0 => {
            let body = read_body(&mut conn, rest);
            if let Ok(mut up) = TcpStream::connect(state.upstream) {
                let _ = up.write_all(up_head.as_bytes());
                let _ = up.write_all(&body[..body.len().min(body_len) / 2]);
                let _ = up.flush();
                let _ = up.shutdown(Shutdown::Both);
            }
            let _ = conn.shutdown(Shutdown::Both);
        }
        Some(Fault::Cut) => {
            let Ok(mut up) = TcpStream::connect(state.upstream) else {
                return;
            };
            let _ = up.write_all(up_head.as_bytes());
            let _ = up.write_all(&rest);
            let mut answer = Vec::new();
            let _ = up.read_to_end(&mut answer);
            let _ = conn.write_all(&answer[..answer.len() / 2]);
            let _ = conn.flush();
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Passes the request on and the answer back.
fn forward(state: &State, mut conn: TcpStream, head: &[u8], rest: &[u8]) {
    let Ok(mut up) = TcpStream::connect(state.upstream) else {
        return;
    };
    if up
        .write_all(head)
        .and_then(|()| up.write_all(rest))
        .is_err()
    {
        return;
    }
    let (Ok(mut c2), Ok(mut u2)) = (conn.try_clone(), up.try_clone()) else {
        return;
    };
    let body = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut up, &mut conn);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = body.join();
}
