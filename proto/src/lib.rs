//! Generated protobuf messages, gRPC clients and servers for Cascade, and the
//! encoded descriptor set served by reflection.

#![allow(clippy::all, missing_docs)]

pub mod common {
    pub mod v1 {
        tonic::include_proto!("cascade.common.v1");
    }
}

pub mod lifecycle {
    pub mod v1 {
        tonic::include_proto!("cascade.lifecycle.v1");
    }
}

pub mod scoring {
    pub mod v1 {
        tonic::include_proto!("cascade.scoring.v1");
    }
}

pub mod opportunity {
    pub mod v1 {
        tonic::include_proto!("cascade.opportunity.v1");
    }
}

/// The messages services keep in their outboxes (not an API).
pub mod outbox {
    pub mod v1 {
        tonic::include_proto!("cascade.outbox.v1");
    }
}

/// The operator's API every service serves for its own outbox.
pub mod admin {
    pub mod v1 {
        tonic::include_proto!("cascade.admin.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Cascade proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cascade_descriptor");
