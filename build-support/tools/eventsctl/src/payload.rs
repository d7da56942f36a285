//! Protobuf payloads as JSON, from the descriptor set every service is built with.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage};

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built into this binary decodes")
    })
}

/// `payload` decoded as the protobuf message named `type_name`, as JSON (proto3 JSON mapping),
/// or why it cannot be.
pub(crate) fn to_json(type_name: &str, payload: &[u8]) -> Result<serde_json::Value, String> {
    let descriptor = pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| format!("unknown message type {type_name:?}"))?;
    let message = DynamicMessage::decode(descriptor, payload)
        .map_err(|error| format!("payload does not decode as {type_name}: {error}"))?;
    serde_json::to_value(&message).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_decodes_to_proto3_json() {
        use prost::Message;
        let event = proto::user::v1::UserCreated {
            user_id: "u1".into(),
            email: "ada@example.com".into(),
            ..Default::default()
        };

        let json = to_json("user.v1.UserCreated", &event.encode_to_vec()).expect("decodes");

        assert_eq!(json["userId"], "u1");
        assert_eq!(json["email"], "ada@example.com");
    }

    #[test]
    fn unknown_types_and_bad_bytes_say_why() {
        assert!(to_json("acme.v1.Nope", b"").is_err());
        assert!(to_json("user.v1.UserCreated", &[0xff, 0xff]).is_err());
    }
}
