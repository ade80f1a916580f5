//! The admin control plane: gRPC (`talkhead.admin.v1`) on a Unix socket for `talkheadctl`, authorised
//! by the caller's peer credentials. Owns the socket and the server; the operations themselves are the
//! shared [`crate::service::Service`]'s, so HTTP and gRPC can never disagree.
//!
//! - [`socket`]: binding the socket file safely (umask, stale files, a second daemon);
//! - [`authz`]: who may call what (root, `admin.group`, `admin.read_group`);
//! - [`grpc`]: the two services, `Read` and `Control`, and type conversions.

pub mod authz;
pub mod grpc;
pub mod socket;

use crate::service::Service;
use authz::Access;
use grpc::{ControlApi, ReadApi, SharedPolicy, authorize};
use talkhead_admin_proto::v1::control_server::ControlServer;
use talkhead_admin_proto::v1::read_server::ReadServer;
use tokio_util::sync::CancellationToken;

/// Serve the admin API on `listener` until `shutdown`; open watch streams end at shutdown too.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    service: Service,
    policy: SharedPolicy,
    shutdown: CancellationToken,
) -> Result<(), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("admin socket: {e}"))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| format!("admin socket: {e}"))?;
    let read_policy = policy.clone();
    let read = ReadServer::with_interceptor(
        ReadApi {
            service: service.clone(),
            shutdown: shutdown.clone(),
        },
        move |req| authorize(&read_policy, &req, Access::Read).map(|()| req),
    );
    let control = ControlServer::with_interceptor(ControlApi { service }, move |req| {
        authorize(&policy, &req, Access::Control).map(|()| req)
    });
    tonic::transport::Server::builder()
        .add_service(read)
        .add_service(control)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|e| format!("admin server: {e}"))
}
