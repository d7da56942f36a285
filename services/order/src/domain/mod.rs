//! The order domain: plans, prices, statuses and the order itself.

mod order;
mod plan;
pub mod price_list;
mod status;

pub use order::{NewOrder, Order};
pub use plan::Plan;
pub use price_list::{Price, PriceList};
pub use status::OrderStatus;
