//! A CreateUser request, validated.

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
    /// Validates every field and reports every bad one at once, in this order: `email`, `name`,
    /// `request_id` (an empty one is none).
    pub fn parse(
        email: &str,
        name: &str,
        plan: Plan,
        request_id: &str,
    ) -> Result<Self, Vec<Violation>> {
        let mut violations = Vec::new();
        let email = check(&mut violations, "email", Email::parse(email));
        let name = check(&mut violations, "name", UserName::parse(name));
        let request_id = text_field::optional_uuid("request_id", request_id)
            .map_err(|violation| violations.push(violation))
            .ok();
        match (email, name, request_id) {
            (Some(email), Some(name), Some(request_id)) => Ok(Self {
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

    #[test]
    fn a_valid_request_parses() {
        let user = NewUser::parse(" ada@example.com ", " Ada ", Plan::Pro, "").expect("valid");
        assert_eq!(user.email.as_str(), "ada@example.com");
        assert_eq!(user.name.as_str(), "Ada");
        assert_eq!(user.plan, Plan::Pro);
        assert_eq!(user.request_id, None);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let fields: Vec<_> = NewUser::parse("nope", "", Plan::Basic, "not-a-uuid")
            .expect_err("invalid")
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["email", "name", "request_id"]);
    }
}
