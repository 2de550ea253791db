use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn started(count: usize) -> ParkedThreads {
    let parked = ParkedThreads::new("test-dev", 0, count, None);
    parked.start(None).expect("start");
    parked
}

#[test]
fn nothing_is_lent_before_the_threads_start() {
    let parked = ParkedThreads::new("test-dev", 0, 1, None);
    assert_eq!(parked.parked(), 0);
    assert!(WorkerThreads::lend(&parked, 1).is_err());
}

#[test]
fn lent_threads_run_the_work_and_come_back_at_stop() {
    let parked = started(2);
    assert_eq!(parked.parked(), 2);
    let mut workers = WorkerThreads::lend(&parked, 2).expect("lend");
    assert_eq!(parked.parked(), 0);
    let (names_tx, names) = mpsc::channel();
    for _ in 0..2 {
        let names_tx = names_tx.clone();
        let stop = workers.stop_event().expect("stop event");
        workers
            .run(move || {
                let name = std::thread::current().name().map(str::to_owned);
                names_tx.send(name).expect("send");
                // Works until told to stop, as device workers do.
                let mut fds = [libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&stop),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: polls one fd we own, for at most TIMEOUT.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, TIMEOUT.as_millis() as i32) };
            })
            .expect("run");
    }
    let mut seen: Vec<_> = (0..2)
        .map(|_| names.recv_timeout(TIMEOUT).expect("work ran"))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [Some("test-dev-0".to_owned()), Some("test-dev-1".to_owned())]
    );
    workers.stop();
    // Back before stop returned: an activation right after a reset finds them.
    assert_eq!(parked.parked(), 2);
    assert!(WorkerThreads::lend(&parked, 2).is_ok());
}

#[test]
fn lending_more_than_parked_takes_none() {
    let parked = started(1);
    assert!(WorkerThreads::lend(&parked, 2).is_err());
    assert_eq!(parked.parked(), 1);
}

#[test]
fn unused_lent_threads_go_back() {
    let parked = started(3);
    let mut workers = WorkerThreads::lend(&parked, 3).expect("lend");
    workers.run(|| {}).expect("run");
    drop(workers);
    assert_eq!(parked.parked(), 3);
}

#[test]
fn a_stuck_thread_is_left_behind_and_comes_back_when_done() {
    let parked = started(1);
    let (unstick, stuck) = mpsc::channel::<()>();
    let mut workers = WorkerThreads::lend(&parked, 1)
        .expect("lend")
        .with_patience(Duration::from_millis(50));
    workers
        .run(move || {
            let _ = stuck.recv_timeout(TIMEOUT);
        })
        .expect("run");
    workers.stop();
    // Detached: no thread to lend, so an activation now fails, never spawns.
    assert_eq!(parked.parked(), 0);
    assert!(WorkerThreads::lend(&parked, 1).is_err());
    unstick.send(()).expect("unstick");
    let deadline = Instant::now() + TIMEOUT;
    while parked.parked() == 0 {
        assert!(Instant::now() < deadline, "the thread never came back");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_failed_setup_fails_the_start() {
    let parked = ParkedThreads::new("test-dev", 0, 2, None);
    let setup: ThreadSetup = Arc::new(|| Err(io::Error::other("no filter")));
    assert!(parked.start(Some(setup)).is_err());
    assert_eq!(parked.parked(), 0);
}

#[test]
fn a_panicking_job_gives_its_thread_back() {
    let parked = started(1);
    let mut workers = WorkerThreads::lend(&parked, 1).expect("lend");
    workers.run(|| panic!("worker panics")).expect("run");
    workers.stop();
    assert_eq!(parked.parked(), 1);
}
