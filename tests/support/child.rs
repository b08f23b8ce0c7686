//! Running a child process with captured output and a deadline, so a hung server or guest
//! fails the test instead of hanging CI.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for the output pipes after the child exited. A grandchild that inherited
/// them could keep them open forever; we do not wait for it.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Runs `cmd` to completion, feeding it `stdin` (or /dev/null) and capturing stdout and stderr.
///
/// If it is still running after `timeout` it is killed; the returned status is then the kill
/// signal and stderr ends with a line saying so. Panics only if the program cannot be started.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let input = if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    cmd.stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));

    // Write stdin on its own thread: a child that fills its stdout pipe before reading all of
    // its input would otherwise deadlock with us.
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        thread::spawn(move || {
            // The child may exit without reading everything; that is its answer, not our error.
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());

    let (status, timed_out) = wait_with_deadline(&mut child, Instant::now() + timeout);
    let stdout = stdout.recv_timeout(PIPE_GRACE).unwrap_or_default();
    let mut stderr = stderr.recv_timeout(PIPE_GRACE).unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(
            format!("\n[support] killed {cmd:?} after the {timeout:?} timeout\n").as_bytes(),
        );
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            // A read error just ends the capture early; whatever was read is still reported.
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

fn wait_with_deadline(child: &mut Child, deadline: Instant) -> (ExitStatus, bool) {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status, false),
            Ok(None) if Instant::now() >= deadline => {
                // Ignore the error: the child may have exited between try_wait and kill.
                let _ = child.kill();
                let status = child
                    .wait()
                    .unwrap_or_else(|e| panic!("cannot reap a killed child: {e}"));
                return (status, true);
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot wait for a child process: {e}"),
        }
    }
}
