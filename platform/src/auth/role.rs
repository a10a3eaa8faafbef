//! Who may do what: a closed set of [`Role`]s, each a fixed set of [`Permission`]s, and the
//! permission each request needs ([`needed`]). Pure: no I/O, no configuration; a token names
//! one role, and changing what a role may do is a change to this file.

use std::fmt;
use std::str::FromStr;

/// One kind of action over the APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read billing data: the catalog, charges, invoices, credit notes, payments, the ledger,
    /// the delivery log, reconciliation.
    Read,
    /// Change the rater's catalog: plans, subscriptions, customers, agents, meters, tax and
    /// FX rates.
    EditCatalog,
    /// Change invoices: lifecycle (paid, void, uncollectible), credit notes, prepaid credit
    /// grants, invoicing runs.
    OperateInvoices,
    /// Move money: manual payments, refunds, write-offs, payment profiles, portal links.
    OperatePayments,
    /// Create, list and revoke the ingest gateway's API keys.
    ManageIngestKeys,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::Read,
        Permission::EditCatalog,
        Permission::OperateInvoices,
        Permission::OperatePayments,
        Permission::ManageIngestKeys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::EditCatalog => "edit_catalog",
            Permission::OperateInvoices => "operate_invoices",
            Permission::OperatePayments => "operate_payments",
            Permission::ManageIngestKeys => "manage_ingest_keys",
        }
    }
}

/// What a token holder is. Roles separate duties: whoever edits prices cannot mark an
/// invoice paid, whoever records payments cannot change prices, a reader changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Read-only finance: every read, no change.
    Reader,
    /// Prices and customers: reads and the catalog.
    CatalogEditor,
    /// Billing operations: reads and invoice changes.
    InvoiceOperator,
    /// Collections and the cash book: reads and payment operations.
    PaymentsOperator,
    /// The ingest gateway's API keys only (no billing data).
    KeyAdmin,
    /// Everything: for break-glass use and development; hand out the narrower roles.
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Reader,
        Role::CatalogEditor,
        Role::InvoiceOperator,
        Role::PaymentsOperator,
        Role::KeyAdmin,
        Role::Admin,
    ];

    /// The name stored with a token and given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::CatalogEditor => "catalog_editor",
            Role::InvoiceOperator => "invoice_operator",
            Role::PaymentsOperator => "payments_operator",
            Role::KeyAdmin => "key_admin",
            Role::Admin => "admin",
        }
    }

    /// Whether the role grants `p`.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Reader => p == Read,
            Role::CatalogEditor => matches!(p, Read | EditCatalog),
            Role::InvoiceOperator => matches!(p, Read | OperateInvoices),
            Role::PaymentsOperator => matches!(p, Read | OperatePayments),
            Role::KeyAdmin => p == ManageIngestKeys,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; roles are reader, catalog_editor, invoice_operator, payments_operator, key_admin, admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRole(s.chars().take(40).collect()))
    }
}

/// Whether a method only reads (`GET`, `HEAD`).
pub fn is_safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD")
}

/// The permission a request with `method` needs on an API whose changes need `writes`:
/// [`Permission::Read`] to read, `writes` for anything else. The ingest keys are their own
/// secret, so reading them needs [`Permission::ManageIngestKeys`] too.
pub fn needed(method: &str, writes: Permission) -> Permission {
    if is_safe(method) && writes != Permission::ManageIngestKeys {
        Permission::Read
    } else {
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_roles_are_refused() {
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
        assert!("Admin".parse::<Role>().is_err());
    }

    #[test]
    fn duties_are_separated() {
        use Permission::*;
        let table = [
            (Role::Reader, vec![Read]),
            (Role::CatalogEditor, vec![Read, EditCatalog]),
            (Role::InvoiceOperator, vec![Read, OperateInvoices]),
            (Role::PaymentsOperator, vec![Read, OperatePayments]),
            (Role::KeyAdmin, vec![ManageIngestKeys]),
            (Role::Admin, Permission::ALL.to_vec()),
        ];
        for (role, granted) in table {
            for p in Permission::ALL {
                assert_eq!(role.allows(p), granted.contains(&p), "{role} {}", p.name());
            }
        }
    }

    #[test]
    fn reads_need_read_and_everything_else_the_write_permission() {
        assert_eq!(needed("GET", Permission::EditCatalog), Permission::Read);
        assert_eq!(
            needed("POST", Permission::EditCatalog),
            Permission::EditCatalog
        );
        assert_eq!(
            needed("DELETE", Permission::OperateInvoices),
            Permission::OperateInvoices
        );
        assert_eq!(
            needed("GET", Permission::ManageIngestKeys),
            Permission::ManageIngestKeys
        );
    }
}
