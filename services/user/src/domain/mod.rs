//! The user domain: validated input as newtypes, and the user itself.

mod email;
mod new_user;
mod plan;
mod user;
mod user_name;

pub use email::Email;
pub use new_user::NewUser;
pub use plan::Plan;
pub use user::User;
pub use user_name::UserName;
