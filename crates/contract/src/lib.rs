//! The openim-callback-gateway contract for Rust hook services.
//!
//! - [`v1`]: the generated prost messages and tonic clients/servers of `openim.callback.v1`
//!   (six services, one unary RPC per OpenIM callback).
//! - [`DESCRIPTOR_SET`]: the encoded `FileDescriptorSet` of the contract, for reflection
//!   (`tonic-reflection`) and for descriptor-driven code such as the gateway itself.
//! - [`PROTO_FILES`]: the `.proto` sources the types were generated from.
//! - [`metadata`]: the gRPC metadata keys the gateway sets on every call.
//!
//! A hook service implements the `*CallbackService` traits it cares about; every RPC it leaves out
//! answers UNIMPLEMENTED (generated default stubs), and the gateway continues the OpenIM operation
//! unchanged.

/// The protobuf package of the contract.
pub const PACKAGE: &str = "openim.callback.v1";

/// The encoded `FileDescriptorSet` of `proto/openim/callback/v1/*.proto`.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// The contract's `.proto` files: (path under `proto/`, contents), sorted by path.
pub const PROTO_FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/proto_sources.rs"));

/// The gRPC metadata keys the gateway sets on calls to hook services (documented in
/// `common.proto` too, for every language).
pub mod metadata {
    /// OpenIM's `operationID` of the request (header, else body): for log correlation.
    pub const OPERATION_ID: &str = "openim-operation-id";
    /// The OpenIM callback command, e.g. `callbackBeforeCreateGroupCommand`.
    pub const COMMAND: &str = "openim-callback-command";
    /// The `key` query parameter OpenIM appends to some callbacks, URL-decoded; absent when none.
    pub const KEY: &str = "openim-key";
    /// Spooled after-events only: a delivery id that stays the same across retries and gateway
    /// restarts. Use it to make an after handler idempotent.
    pub const DELIVERY_ID: &str = "openim-delivery-id";
    /// Spooled after-events only: the attempt number of this delivery, from 1.
    pub const DELIVERY_ATTEMPT: &str = "openim-delivery-attempt";
    /// Message callbacks that carry `sessionType` only: the conversation ID OpenIM computes for
    /// the message (`si_<a>_<b>`, `g_<group>`, `sg_<group>`, `sn_<a>_<b>`; see `common.proto`).
    pub const CONVERSATION_ID: &str = "openim-conversation-id";
    /// Every key above, in this order.
    pub const ALL: [&str; 6] = [
        OPERATION_ID,
        COMMAND,
        KEY,
        DELIVERY_ID,
        DELIVERY_ATTEMPT,
        CONVERSATION_ID,
    ];
}

/// Generated prost messages and tonic clients/servers of `openim.callback.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("openim.callback.v1");
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn descriptor_set_and_sources_cover_the_same_files() {
        let fds = prost_types_free::FileDescriptorSet::decode(DESCRIPTOR_SET).expect("decodes");
        let mut names: Vec<String> = fds.file.into_iter().map(|f| f.name).collect();
        names.sort();
        let sources: Vec<String> = PROTO_FILES.iter().map(|(p, _)| (*p).to_owned()).collect();
        assert_eq!(names, sources);
        assert!(PROTO_FILES.iter().all(|(_, text)| text.contains(PACKAGE)));
    }

    /// Just enough of `google.protobuf.FileDescriptorSet` to read the file names, so the crate
    /// needs no `prost-types` dependency.
    mod prost_types_free {
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            pub(super) file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub(super) struct FileDescriptorProto {
            #[prost(string, tag = "1")]
            pub(super) name: String,
        }
    }

    #[test]
    fn metadata_keys_are_lowercase_ascii_header_names() {
        for key in metadata::ALL {
            assert!(
                key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{key}"
            );
        }
    }
}
