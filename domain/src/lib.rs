//! The shared vocabulary of Tally: the types every stage agrees on.
//!
//! It owns the public event contract (a CloudEvents 1.0 usage event), the identifiers that
//! appear in subjects and tables, declared meters and how they read a quantity out of an
//! event, tumbling windows, aggregation arithmetic, currencies and rounding, and billing
//! periods. It performs no I/O and reads no clock: callers pass `now` in, so every rule here
//! is testable at any instant.
//!
//! It must never depend on NATS, ClickHouse or a runtime; stages meet through these types.
//!
//! # Layout
//! - [`ids`]: validated newtypes for customers, agents, event ids and meter slugs.
//! - [`identity`]: an event's identity (customer, source, id) and its `Nats-Msg-Id`.
//! - [`reason`]: the stable rejection reason codes (dead-letter and HTTP errors).
//! - [`shape`]: nesting and string limits every path applies before parsing an event.
//! - [`exact`]: exact decimals from configuration (strings or integers, never floats).
//! - [`event`]: parsing and validating a CloudEvents usage event from bytes.
//! - [`data`]: reading properties out of an event's `data` by JSON path, exactly.
//! - [`meter`]: declared meters: which events they select, the value and group-by values.
//! - [`aggregation`]: SUM, COUNT, MIN, MAX partial states, folding and merging.
//! - [`window`]: tumbling window arithmetic.
//! - [`money`]: currencies, minor units and the one rounding rule.
//! - [`period`]: billing periods (half-open UTC intervals).
//! - [`invoice_status`]: the invoice lifecycle and its allowed transitions.
//! - [`subject`]: the NATS subject layout `usage.<customer>.<agent>`.

pub mod aggregation;
pub mod data;
mod envelope;
pub mod event;
pub mod exact;
pub mod identity;
pub mod ids;
pub mod invoice_status;
pub mod meter;
pub mod money;
pub mod period;
pub mod reason;
pub mod shape;
pub mod subject;
pub mod window;

pub use aggregation::{Aggregation, Partial};
pub use event::{EventError, EventView, UsageEvent};
pub use identity::nats_msg_id;
pub use ids::{AgentId, CustomerId, EventId, IdError, MeterSlug};
pub use invoice_status::{InvoiceStatus, StatusError};
pub use meter::{Meter, MeterError, MeterReading};
pub use money::{Currency, MoneyError};
pub use period::{BillingCycle, Period};
pub use reason::Reason;
pub use window::Window;
