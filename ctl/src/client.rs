//! Connecting to talkheadd's admin socket and turning every failure into an exit code with a message
//! that says what to do.

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use talkhead_admin_proto::v1::control_client::ControlClient;
use talkhead_admin_proto::v1::read_client::ReadClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Documented exit codes.
pub mod exit {
    /// Something else went wrong.
    pub const OTHER: u8 = 1;
    /// Bad usage or an argument the daemon refused.
    pub const USAGE: u8 = 2;
    /// The daemon could not be reached.
    pub const UNREACHABLE: u8 = 3;
    /// The thing asked for does not exist.
    pub const NOT_FOUND: u8 = 4;
    /// The caller may not do this.
    pub const PERMISSION_DENIED: u8 = 5;
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

impl Failure {
    /// A failure from a gRPC status.
    pub fn from_status(s: &tonic::Status, socket: &Path) -> Failure {
        use tonic::Code;
        let code = match s.code() {
            Code::PermissionDenied => exit::PERMISSION_DENIED,
            Code::NotFound => exit::NOT_FOUND,
            Code::InvalidArgument => exit::USAGE,
            Code::Unavailable if s.message().contains("transport") || s.message().contains("connect") => {
                exit::UNREACHABLE
            }
            _ => exit::OTHER,
        };
        let message = match code {
            exit::UNREACHABLE => unreachable_message(socket, s.message()),
            exit::PERMISSION_DENIED => format!(
                "permission denied: {} (ask an administrator to add you to the right group, or use sudo)",
                s.message()
            ),
            _ => s.message().to_owned(),
        };
        Failure { code, message }
    }
}

fn unreachable_message(socket: &Path, why: &str) -> String {
    format!(
        "cannot reach talkheadd at {}: {why}\nis the service running? systemctl status talkheadd (or point --socket / TALKHEAD_SOCKET at its admin.socket)",
        socket.display()
    )
}

/// Both clients on one connection.
pub struct Clients {
    /// Read-only calls.
    pub read: ReadClient<Channel>,
    /// Control calls.
    pub control: ControlClient<Channel>,
    /// The socket, for messages.
    pub socket: PathBuf,
}

/// Connect now (so an absent daemon is reported before any call).
pub async fn connect(socket: &Path) -> Result<Clients, Failure> {
    // Check the path first: the transport's errors do not say which of these it was.
    match std::fs::metadata(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure {
                code: exit::UNREACHABLE,
                message: unreachable_message(socket, "no such socket"),
            });
        }
        _ => {}
    }
    if let Err(e) = tokio::net::UnixStream::connect(socket).await {
        let (code, message) = match e.kind() {
            std::io::ErrorKind::PermissionDenied => (
                exit::PERMISSION_DENIED,
                format!(
                    "permission denied opening {}: the socket admits only talkheadd's admin groups (admin.group, admin.read_group); ask to be added or use sudo",
                    socket.display()
                ),
            ),
            _ => (exit::UNREACHABLE, unreachable_message(socket, &e.to_string())),
        };
        return Err(Failure { code, message });
    }
    let path = socket.to_owned();
    // The URI is a placeholder: the connector below always dials the Unix socket.
    let channel = Endpoint::from_static("http://talkheadd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| Failure {
            code: exit::UNREACHABLE,
            message: unreachable_message(socket, &e.to_string()),
        })?;
    Ok(Clients {
        read: ReadClient::new(channel.clone()),
        control: ControlClient::new(channel),
        socket: socket.to_owned(),
    })
}
