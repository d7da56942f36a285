//! A CreateUser request, validated.

use proto::user::v1::CreateUserRequest;
use service_kit::{error::Violation, text_field};
use uuid::Uuid;

use super::{Email, Plan, UserName};

/// Everything needed to create a user, every field valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub email: Email,
    pub name: UserName,
    pub plan: Plan,
    /// The client's idempotency key, if it sent one.
    pub request_id: Option<Uuid>,
}

impl NewUser {
    /// Validates every field and reports every bad one at once.
    pub fn parse(request: &CreateUserRequest) -> Result<Self, Vec<Violation>> {
        let mut violations = Vec::new();
        let email = check(&mut violations, "email", Email::parse(&request.email));
        let name = check(&mut violations, "name", UserName::parse(&request.name));
        let plan = check(&mut violations, "plan", Plan::from_proto(request.plan));
        let request_id = text_field::optional_uuid("request_id", &request.request_id)
            .map_err(|violation| violations.push(violation))
            .ok();
        match (email, name, plan, request_id) {
            (Some(email), Some(name), Some(plan), Some(request_id)) => Ok(Self {
                email,
                name,
                plan,
                request_id,
            }),
            _ => Err(violations),
        }
    }
}

/// The value, or `None` after recording why `field` is bad.
fn check<T>(
    violations: &mut Vec<Violation>,
    field: &'static str,
    outcome: Result<T, String>,
) -> Option<T> {
    outcome
        .map_err(|description| violations.push(Violation::new(field, description)))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(email: &str, name: &str) -> CreateUserRequest {
        CreateUserRequest {
            email: email.into(),
            name: name.into(),
            ..CreateUserRequest::default()
        }
    }

    #[test]
    fn a_valid_request_parses() {
        let user = NewUser::parse(&request(" ada@example.com ", " Ada ")).expect("valid");
        assert_eq!(user.email.as_str(), "ada@example.com");
        assert_eq!(user.name.as_str(), "Ada");
        assert_eq!(user.plan, Plan::Basic);
        assert_eq!(user.request_id, None);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut bad = request("nope", "");
        bad.plan = 99;
        bad.request_id = "not-a-uuid".into();
        let fields: Vec<_> = NewUser::parse(&bad)
            .expect_err("invalid")
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["email", "name", "plan", "request_id"]);
    }
}
