//! The order domain: prices, statuses and the order itself.

mod order;
pub mod price_list;
mod status;

pub use order::{NewOrder, Order};
pub(crate) use order::{plan_from_db, plan_to_db};
pub use price_list::{Price, PriceList};
pub use status::OrderStatus;
