//! `requirepeer`: the operating-system user that runs the server at the other end of a Unix-domain socket.
//!
//! Whoever can create the socket file can listen on it before the real server starts (or after it stopped) and
//! collect passwords. As libpq does, the client asks the kernel who the peer process runs as (SO_PEERCRED,
//! through tokio) and compares that user's name with `requirepeer` before a byte of the startup is sent. TCP
//! connections are not checked: the kernel knows nothing of the remote process, and libpq checks only Unix
//! sockets too.

use std::io;

use nix::unistd::{Uid, User};
use tokio::net::UnixStream;

use crate::Error;

/// Refuses the connection over `stream` unless the process at the other end runs as the user called `required`.
/// (The caller's error context names the socket.)
pub(crate) fn check_peer(stream: &UnixStream, required: &str) -> Result<(), Error> {
    let uid = stream
        .peer_cred()
        .map_err(|e| {
            Error::io(io::Error::new(
                e.kind(),
                format!("could not read the peer credentials of the socket (requirepeer): {e}"),
            ))
        })?
        .uid();
    let actual = user_name(uid)?;
    if actual != required {
        return Err(Error::auth(format!(
            "requirepeer is {required:?}, but the actual peer user name is {actual:?}: the server process \
             runs as another user"
        )));
    }
    Ok(())
}

/// The name of the user with id `uid`, looked up as libpq does (getpwuid_r, so through NSS).
fn user_name(uid: u32) -> Result<String, Error> {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => Ok(user.name),
        Ok(None) => Err(Error::auth(format!(
            "requirepeer is set, but the server's user id {uid} has no user name (no such local user)"
        ))),
        Err(errno) => Err(Error::io(io::Error::new(
            io::Error::from(errno).kind(),
            format!("could not look up local user id {uid} for requirepeer: {errno}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// The peer of a socket this process listens on is this process: its user passes, another is refused
    /// with both names in the message.
    #[tokio::test]
    async fn the_peers_user_is_compared_by_name() {
        let dir = std::env::temp_dir().join(format!("wasi-pg-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".s.PGSQL.5432");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (client, accepted) = tokio::join!(UnixStream::connect(&path), listener.accept());
        let (client, _server) = (client.unwrap(), accepted.unwrap());
        let me = user_name(nix::unistd::geteuid().as_raw()).unwrap();

        check_peer(&client, &me).unwrap();
        let other = if me == "nobody" { "root" } else { "nobody" };
        let err = check_peer(&client, other).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth);
        let message = err.to_string();
        assert!(
            message.contains(&format!("requirepeer is {other:?}")),
            "{message}"
        );
        assert!(message.contains(&format!("is {me:?}")), "{message}");
        drop(client);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_uid_without_a_user_is_an_error() {
        // Linux's overflow uid minus one: far above any real account on a test machine.
        let err = user_name(u32::MAX - 2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(err.to_string().contains("no user name"), "{err}");
    }
}
