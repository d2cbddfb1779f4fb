//! Running keybag on a pseudo-terminal, to answer its prompts the way a person would: each
//! answer is typed only once keybag has shown the prompt and switched echo off, so that what
//! the terminal shows is what keybag (and the terminal driver, on its behalf) prints.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A keybag process whose stdin, stdout, stderr and controlling terminal are a pty.
pub struct OnTerminal {
    /// The process.
    pub child: Child,
    master: File,
    transcript: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
    /// Where in the transcript the next prompt is looked for.
    from: usize,
}

/// Spawns `cmd` (keybag, or in this kit's own test a shell) in a new session whose controlling terminal is a fresh pty.
pub fn spawn(mut cmd: Command) -> OnTerminal {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes the two descriptors it opens; the rest may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("run keybag on a pty");
    // `cmd` (dropped here) held the parent's copies of the slave: once keybag exits, reading
    // the master ends.
    drop(cmd);
    let master = File::from(master);
    let transcript = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let mut master = master.try_clone().unwrap();
        let transcript = transcript.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every slave descriptor is closed.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                transcript.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    OnTerminal {
        child,
        master,
        transcript,
        reader,
        from: 0,
    }
}

impl OnTerminal {
    /// Waits for `prompt` to show (after the previous one) and for echo to be off, then
    /// types `answer` and Enter. Fails the test if keybag exits before asking.
    pub fn answer(&mut self, prompt: &str, answer: &str) {
        loop {
            let t = self.transcript.lock().unwrap().clone();
            if let Some(at) = find(&t[self.from..], prompt.as_bytes()) {
                self.from += at + prompt.len();
                break;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader collect what is left before showing it.
                std::thread::sleep(Duration::from_millis(50));
                let t = self.transcript.lock().unwrap().clone();
                panic!(
                    "keybag ended ({status}) without asking {prompt:?}:\n{}",
                    String::from_utf8_lossy(&t)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Echo off, or (a prompt that never turns it off) keybag waiting for the answer
        // anyway: then the terminal echoes it, and the transcript check fails.
        while self.echo_on() && !self.reading() {
            assert!(self.child.try_wait().unwrap().is_none(), "keybag ended");
            std::thread::sleep(Duration::from_millis(2));
        }
        self.master
            .write_all(format!("{answer}\n").as_bytes())
            .unwrap();
    }

    /// Whether the terminal echoes input (the master reports the slave's settings).
    fn echo_on(&self) -> bool {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::tcgetattr(self.master.as_raw_fd(), &mut t) };
        assert_eq!(r, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        t.c_lflag & libc::ECHO != 0
    }

    /// Whether the process's main thread is blocked in read(2).
    fn reading(&self) -> bool {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .ok()
            .and_then(|s| s.split(' ').next()?.parse::<i64>().ok())
            == Some(libc::SYS_read)
    }

    /// Waits for keybag to exit; its status and everything the terminal showed.
    pub fn finish(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        let status = self.child.wait().unwrap();
        drop(self.master);
        self.reader.join().unwrap();
        let t = std::mem::take(&mut *self.transcript.lock().unwrap());
        (status, t)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer typed at a prompt that leaves echo on shows on the terminal: the
    /// transcript check would see it.
    #[test]
    fn an_echoed_answer_shows_in_the_transcript() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "printf 'Secret: '; read x; echo done"]);
        let mut t = spawn(cmd);
        t.answer("Secret: ", "kbPlantedSecret-0123");
        let (status, shown) = t.finish();
        assert!(status.success());
        let shown = String::from_utf8_lossy(&shown);
        assert!(shown.contains("kbPlantedSecret-0123"), "{shown}");
        assert!(shown.contains("done"), "{shown}");
    }
}
