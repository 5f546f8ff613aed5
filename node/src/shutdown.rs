//! SIGTERM and SIGINT, the signals that end a long-running command cleanly (Kubernetes sends
//! SIGTERM to a pod it stops; a terminal sends SIGINT on Ctrl-C).
//!
//! They are blocked before the runtime starts its threads, which inherit the mask, and read
//! from a signalfd: no handler runs, and a signal that comes before the command awaits it waits
//! in the kernel rather than ending the process. tokio's signal driver would keep a channel for
//! each of the 65 signals: 22 KiB of every node's heap.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset adds a valid signal to it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and in every thread it starts from now on,
/// so that they wait for [`shutdown_signal`]. Call it before the runtime starts.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_signals();
    // SAFETY: the set is initialised; the old mask is not asked for.
    let error = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    match error {
        0 => Ok(()),
        error => Err(io::Error::from_raw_os_error(error)),
    }
}

/// Waits for SIGTERM or SIGINT, blocked by [`block_shutdown_signals`], and names the one that
/// came.
pub async fn shutdown_signal() -> io::Result<&'static str> {
    let set = shutdown_signals();
    // SAFETY: -1 asks for a new descriptor; the set is initialised.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns; the OwnedFd keeps it
    // open for as long as the AsyncFd holds it.
    let signals = unsafe {
        AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), Interest::READABLE)
            .map_err(io::Error::from)?
    };
    loop {
        let mut ready = signals.readable().await?;
        match ready.try_io(|fd| read_signal(fd.get_ref())) {
            Ok(result) => return result,
            // Woken with nothing to read: wait again.
            Err(_would_block) => continue,
        }
    }
}

/// Reads one signal from a signalfd.
fn read_signal(signals: &OwnedFd) -> io::Result<&'static str> {
    let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::uninit();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which has room for them.
    let read = unsafe { libc::read(signals.as_raw_fd(), info.as_mut_ptr().cast(), size) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    if read.unsigned_abs() != size {
        return Err(io::Error::other(format!("a signalfd read gave {read} of {size} bytes")));
    }
    // SAFETY: the kernel wrote a whole signalfd_siginfo.
    let signal = unsafe { info.assume_init() }.ssi_signo;
    Ok(if signal == libc::SIGTERM.unsigned_abs() { "SIGTERM" } else { "SIGINT" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_signal_is_read_and_named() {
        // This test's thread only: the harness's other threads keep their masks.
        block_shutdown_signals().unwrap();
        let waiting = tokio::spawn(shutdown_signal());
        tokio::task::yield_now().await;
        // SAFETY: sends SIGTERM to this thread alone, which blocks it.
        assert_eq!(unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) }, 0);
        assert_eq!(waiting.await.unwrap().unwrap(), "SIGTERM");
        // SAFETY: as above; SIGINT is blocked too.
        assert_eq!(unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGINT) }, 0);
        assert_eq!(shutdown_signal().await.unwrap(), "SIGINT", "one that came before the wait");
    }
}
