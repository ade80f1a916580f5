//! The admin API of talkheadd (`talkhead.admin.v1`): the protocol buffers in `proto/` and the tonic
//! client and server generated from them.
//!
//! The generated code is committed (`src/gen/`) so that building needs no code generator at all; the
//! test `generated_code_matches_the_proto` regenerates it and fails on any drift. After editing the
//! `.proto`, run `cargo run -p talkhead-admin-proto --example regenerate`.

/// Generated messages, the `read` and `control` clients and servers.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod v1 {
    include!("gen/talkhead.admin.v1.rs");
}

/// Where the `.proto` files live, relative to this crate.
pub const PROTO_ROOT: &str = "proto";
/// The one `.proto` of the API, relative to [`PROTO_ROOT`].
pub const PROTO_FILE: &str = "talkhead/admin/v1/admin.proto";
/// The file the generator writes, relative to `src/gen/`.
pub const GENERATED_FILE: &str = "talkhead.admin.v1.rs";
