//! NATS authorization: generates the `authorization` block of a nats-server configuration with
//! one user per Tally service and one per customer's agents, each allowed only the subjects
//! its duties need. Include the file from the server's main configuration
//! (`include "nats-auth.conf"`); see docs/SECURITY.md.
//!
//! | user | may publish | may not |
//! |---|---|---|
//! | `agent-<customer>` | `<prefix>.<customer>.>`, `<root>.authorize.<customer>.>`, `<root>.balance.<customer>` | any other customer, the JetStream API, the DLQ |
//! | `tally-gateway` | `<prefix>.>`, `<root>.authorize.>`, `<root>.balance.>`, stream info/create/update | consume, delete or purge streams |
//! | `tally-aggregator` | consumer API, acks, `<dlq prefix>.>`, the live feed `<prefix>_feed.>`, stream info/create/update, its lease bucket `<stream>_AGGREGATORS` | forge usage on `<prefix>.>`, delete or purge streams |
//! | `tally-invoicer` | its invoice-number KV bucket (`$KV.<bucket>.>`, get, create/info of `KV_<bucket>`) | usage, consumers, any other stream |
//! | `tally-spend` | its streams (`<stream>_FEED` read, `<stream>_HOLDS` and `<stream>_ALERTS` written: `<prefix>_holds.>`, `<root>.alerts.>`), its KV buckets, reads of the aggregators' lease; subscribes to `<root>.authorize.*.*` and `<root>.balance.*` and answers only to their reply subjects (`allow_responses`) | usage, any other stream or bucket |
//! | `tally-payments` | the consumer API and acks of `<stream>_ALERTS`, `<root>.balance.>` | usage, any other stream |
//! | `tally-admin` | everything | |
//!
//! Everyone but the admin may subscribe only to its own reply subjects, `_INBOX.<user>.>`
//! (JetStream acks, pulled messages, KV reads), and each client connects with that inbox
//! prefix (`tally_platform::streams::connect` sets it; agents publishing directly set it in
//! their NATS client, docs/SECURITY.md). With the shared `_INBOX.>` of before, any agent could
//! subscribe there and read copies of the usage the aggregator pulls and of the invoices the
//! invoicer reads. It owns the rendering only; it never starts or reconfigures a server.
//! Passwords are 32 hex digits from the OS's CSPRNG (128 bits), so they need no quoting or
//! escaping.

use ring::rand::SecureRandom;
use tally_domain::CustomerId;

/// What a NATS user is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Operators and `tally-migrate`-style tooling: every subject.
    Admin,
    Aggregator,
    Gateway,
    /// The invoicer: its invoice-number KV bucket only.
    Invoicer {
        bucket: String,
    },
    /// A customer's agents publishing directly.
    Agent(CustomerId),
    /// The spend deciders (`tally-spend`).
    Spend,
    /// The payments service: the spend alerts it turns into webhooks, balances for the portal.
    Payments,
}

/// One NATS user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    pub user: String,
    pub password: String,
    pub role: Role,
}

/// Why generating failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    #[error("the OS random number generator failed")]
    Random,
    #[error("field `customers`: {0}")]
    Customer(#[from] tally_domain::IdError),
    #[error("field `invoice_bucket`: {0:?} is not a KV bucket name (letters, digits, `_`, `-`)")]
    Bucket(String),
}

fn password() -> Result<String, NatsAuthError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| NatsAuthError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The invoicer's default KV bucket (`[invoicer] numbers_bucket`).
pub use tally_platform::streams::DEFAULT_INVOICE_NUMBER_BUCKET as DEFAULT_INVOICE_BUCKET;

/// `tally-admin`, `tally-aggregator`, `tally-gateway`, `tally-invoicer` (bucket
/// [`DEFAULT_INVOICE_BUCKET`]) and one `agent-<customer>` per customer, with fresh passwords.
pub fn users(customers: &[&str]) -> Result<Vec<NatsUser>, NatsAuthError> {
    users_with_bucket(customers, DEFAULT_INVOICE_BUCKET)
}

/// Like [`users`], with the invoicer's KV bucket named.
pub fn users_with_bucket(
    customers: &[&str],
    invoice_bucket: &str,
) -> Result<Vec<NatsUser>, NatsAuthError> {
    if invoice_bucket.is_empty()
        || !invoice_bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(NatsAuthError::Bucket(invoice_bucket.to_owned()));
    }
    let mut out = Vec::with_capacity(customers.len() + 4);
    for (user, role) in [
        ("tally-admin", Role::Admin),
        ("tally-aggregator", Role::Aggregator),
        ("tally-gateway", Role::Gateway),
        ("tally-spend", Role::Spend),
        ("tally-payments", Role::Payments),
        (
            "tally-invoicer",
            Role::Invoicer {
                bucket: invoice_bucket.to_owned(),
            },
        ),
    ] {
        out.push(NatsUser {
            user: user.to_owned(),
            password: password()?,
            role,
        });
    }
    for c in customers {
        let customer = CustomerId::new(*c)?;
        out.push(NatsUser {
            user: format!("agent-{customer}"),
            password: password()?,
            role: Role::Agent(customer),
        });
    }
    Ok(out)
}

fn list(subjects: &[String]) -> String {
    let quoted: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The KV API subjects of bucket `bucket`: its keys, its stream's info and creation, and
/// reads of its values.
fn kv_subjects(bucket: &str) -> Vec<String> {
    vec![
        format!("$KV.{bucket}.>"),
        format!("$JS.API.STREAM.INFO.KV_{bucket}"),
        format!("$JS.API.STREAM.CREATE.KV_{bucket}"),
        format!("$JS.API.STREAM.MSG.GET.KV_{bucket}"),
        format!("$JS.API.DIRECT.GET.KV_{bucket}"),
        format!("$JS.API.DIRECT.GET.KV_{bucket}.>"),
    ]
}

/// The permissions of `user` with `role`; `names` are the configured subject prefixes and
/// usage stream.
fn permissions(user: &str, role: &Role, names: &Names<'_>) -> String {
    let Some(grant) = grant(role, names) else {
        return "{ publish: \">\", subscribe: \">\" }".to_owned();
    };
    let mut subscribe = vec![format!("{}.>", tally_platform::streams::inbox_prefix(user))];
    subscribe.extend(grant.subscribe);
    let deny = if grant.deny.is_empty() {
        String::new()
    } else {
        format!(", deny: {}", list(&grant.deny))
    };
    let responses = if grant.responses {
        ", allow_responses: true"
    } else {
        ""
    };
    format!(
        "{{ publish: {{ allow: {}{deny} }}, subscribe: {{ allow: {} }}{responses} }}",
        list(&grant.allow),
        list(&subscribe),
    )
}

/// What a role may do besides subscribing to its own inbox.
#[derive(Default)]
struct Grant {
    /// Subjects it may publish to, and those denied among them.
    allow: Vec<String>,
    deny: Vec<String>,
    /// Subjects it may subscribe to besides its inbox.
    subscribe: Vec<String>,
    /// Whether it may answer the requests it received (their reply subjects only).
    responses: bool,
}

impl Grant {
    fn publish(allow: Vec<String>) -> Grant {
        Grant {
            allow,
            ..Grant::default()
        }
    }
}

/// Declaring and updating streams.
fn stream_admin() -> [String; 4] {
    [
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.STREAM.CREATE.*",
        "$JS.API.STREAM.UPDATE.*",
    ]
    .map(String::from)
}

/// What a service may do with a stream it reads through its own consumers.
fn consume(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.*.{stream}"),
        format!("$JS.API.CONSUMER.*.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
    ]
}

/// The grant of `role`; `None` for the admin, who may do anything.
fn grant(role: &Role, names: &Names<'_>) -> Option<Grant> {
    let (prefix, root, s) = (names.prefix, names.spend_root, names.stream);
    Some(match role {
        Role::Admin => return None,
        Role::Agent(c) => Grant::publish(vec![
            format!("{prefix}.{c}.>"),
            // ask before spending, for its own customer only
            format!("{root}.authorize.{c}.>"),
            format!("{root}.balance.{c}"),
        ]),
        Role::Gateway => {
            let mut allow = vec![
                format!("{prefix}.>"),
                format!("{root}.authorize.>"),
                format!("{root}.balance.>"),
            ];
            allow.extend(stream_admin());
            Grant::publish(allow)
        }
        Role::Invoicer { bucket } => {
            let mut allow = vec!["$JS.API.INFO".to_owned()];
            allow.extend(kv_subjects(bucket));
            Grant::publish(allow)
        }
        Role::Aggregator => aggregator_grant(names),
        Role::Spend => spend_grant(names),
        Role::Payments => {
            let mut allow = vec!["$JS.API.INFO".to_owned()];
            allow.extend(consume(&format!("{s}_ALERTS")));
            allow.push(format!("$JS.ACK.{s}_ALERTS.>"));
            // the portal asks the deciders for a customer's live balance
            allow.push(format!("{root}.balance.>"));
            Grant::publish(allow)
        }
    })
}

fn aggregator_grant(names: &Names<'_>) -> Grant {
    let (prefix, s) = (names.prefix, names.stream);
    let mut allow = vec![
        "$JS.API.CONSUMER.>".to_owned(),
        "$JS.ACK.>".to_owned(),
        format!("{}.>", names.dlq_prefix),
        // the live usage feed (platform/src/feed.rs), which only spend deciders read
        format!("{prefix}_feed.>"),
    ];
    allow.extend(stream_admin());
    // sealing reads the stream's message at the consumer's ack floor (aggregator/src/seal.rs)
    allow.push(format!("$JS.API.STREAM.MSG.GET.{s}"));
    // the partition leases (aggregator/src/lease.rs)
    allow.extend(kv_subjects(&format!("{s}_AGGREGATORS")));
    Grant {
        allow,
        deny: vec![format!("{prefix}.>")],
        ..Grant::default()
    }
}

fn spend_grant(names: &Names<'_>) -> Grant {
    let (prefix, root, s) = (names.prefix, names.spend_root, names.stream);
    let mut allow = vec!["$JS.API.INFO".to_owned()];
    // the live feed (read), the holds journal and the alerts (declared and written)
    for stream in ["FEED", "HOLDS", "ALERTS"] {
        allow.extend(consume(&format!("{s}_{stream}")));
        allow.push(format!("$JS.API.STREAM.CREATE.{s}_{stream}"));
    }
    allow.push(format!("{prefix}_holds.>"));
    allow.push(format!("{root}.alerts.>"));
    // its lease and the alerts sent, and (read only) the aggregators' lease: the join point
    allow.extend(kv_subjects(&format!("{s}_SPEND")));
    allow.extend(kv_subjects(&format!("{s}_SPEND_ALERTS")));
    let agg = format!("KV_{s}_AGGREGATORS");
    allow.extend([
        format!("$JS.API.STREAM.INFO.{agg}"),
        format!("$JS.API.STREAM.MSG.GET.{agg}"),
        format!("$JS.API.DIRECT.GET.{agg}"),
        format!("$JS.API.DIRECT.GET.{agg}.>"),
    ]);
    Grant {
        allow,
        subscribe: vec![format!("{root}.authorize.*.*"), format!("{root}.balance.*")],
        // answers go to the reply subjects of the requests it received, nowhere else
        responses: true,
        ..Grant::default()
    }
}

/// The names of a deployment's NATS resources that permissions refer to.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    /// `nats.subject_prefix`.
    pub prefix: &'a str,
    /// `nats.dlq_subject_prefix`.
    pub dlq_prefix: &'a str,
    /// `nats.stream`: the aggregators' lease bucket is `<stream>_AGGREGATORS`.
    pub stream: &'a str,
    /// `spend.subject_root` (default `tally`): the spend deciders' subjects.
    pub spend_root: &'a str,
}

/// The `authorization { users = [...] }` block for `users`.
pub fn render(users: &[NatsUser], names: &Names<'_>) -> String {
    let mut out = String::from(
        "# Generated by `tally-gateway nats-config`: one user per Tally service and per customer's agents.\nauthorization {\n  users = [\n",
    );
    for u in users {
        out.push_str(&format!(
            "    {{ user: \"{}\", password: \"{}\", permissions: {} }}\n",
            u.user,
            u.password,
            permissions(&u.user, &u.role, names)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_may_publish_only_to_their_customer() {
        let users = users(&["acme", "globex"]).unwrap();
        let conf = render(
            &users,
            &Names {
                prefix: "usage",
                dlq_prefix: "usage_dlq",
                stream: "USAGE",
                spend_root: "tally",
            },
        );
        assert!(conf.contains(r#"user: "agent-acme""#));
        assert!(conf.contains(
            r#"publish: { allow: ["usage.acme.>", "tally.authorize.acme.>", "tally.balance.acme"] }"#
        ));
        assert!(conf.contains(
            r#"publish: { allow: ["usage.globex.>", "tally.authorize.globex.>", "tally.balance.globex"] }"#
        ));
        assert_eq!(
            conf.matches("publish: \">\"").count(),
            1,
            "only the admin has every subject"
        );
        assert_ne!(users[4].password, users[5].password);
    }

    #[test]
    fn the_aggregator_cannot_forge_usage_and_nobody_may_delete_streams() {
        let conf = render(
            &users(&[]).unwrap(),
            &Names {
                prefix: "usage",
                dlq_prefix: "usage_dlq",
                stream: "USAGE",
                spend_root: "tally",
            },
        );
        let aggregator = conf
            .lines()
            .find(|l| l.contains("tally-aggregator"))
            .unwrap();
        assert!(aggregator.contains(r#"deny: ["usage.>"]"#), "{aggregator}");
        assert!(aggregator.contains("\"usage_dlq.>\""));
        assert!(!conf.contains("STREAM.DELETE") && !conf.contains("STREAM.PURGE"));
        let gateway = conf.lines().find(|l| l.contains("tally-gateway")).unwrap();
        assert!(!gateway.contains("CONSUMER"), "{gateway}");
    }

    #[test]
    fn the_aggregator_may_use_its_lease_bucket() {
        let names = Names {
            prefix: "usage",
            dlq_prefix: "usage_dlq",
            stream: "USAGE",
            spend_root: "tally",
        };
        let conf = render(&users(&[]).unwrap(), &names);
        let aggregator = conf
            .lines()
            .find(|l| l.contains("tally-aggregator"))
            .unwrap();
        assert!(
            aggregator.contains("\"$KV.USAGE_AGGREGATORS.>\""),
            "{aggregator}"
        );
        assert!(!aggregator.contains("INVOICE_NUMBERS"), "{aggregator}");
        // sealing reads a message of the usage stream (it timed out under its own user)
        assert!(
            aggregator.contains("\"$JS.API.STREAM.MSG.GET.USAGE\""),
            "{aggregator}"
        );
    }

    #[test]
    fn the_invoicer_may_use_only_its_bucket() {
        let conf = render(
            &users_with_bucket(&[], "NUMS").unwrap(),
            &Names {
                prefix: "usage",
                dlq_prefix: "usage_dlq",
                stream: "USAGE",
                spend_root: "tally",
            },
        );
        let invoicer = conf.lines().find(|l| l.contains("tally-invoicer")).unwrap();
        assert!(invoicer.contains("\"$KV.NUMS.>\""), "{invoicer}");
        assert!(invoicer.contains("STREAM.CREATE.KV_NUMS\""), "{invoicer}");
        assert!(
            !invoicer.contains("usage") && !invoicer.contains("CONSUMER"),
            "{invoicer}"
        );
        assert!(users_with_bucket(&[], "a.b").is_err());
        assert!(users_with_bucket(&[], "").is_err());
    }

    /// Issue 16, finding 6: replies are readable only by the user they are for.
    #[test]
    fn each_user_may_subscribe_only_to_its_own_reply_subjects() {
        let conf = render(
            &users(&["acme"]).unwrap(),
            &Names {
                prefix: "usage",
                dlq_prefix: "usage_dlq",
                stream: "USAGE",
                spend_root: "tally",
            },
        );
        for user in [
            "tally-aggregator",
            "tally-gateway",
            "tally-invoicer",
            "agent-acme",
        ] {
            let line = conf
                .lines()
                .find(|l| l.contains(&format!("user: \"{user}\"")))
                .unwrap();
            assert!(
                line.contains(&format!("subscribe: {{ allow: [\"_INBOX.{user}.>\"] }}")),
                "{line}"
            );
        }
        assert!(!conf.contains("\"_INBOX.>\""), "{conf}");
    }

    /// Issue 15: the deciders answer only the requests they receive; agents ask for their own
    /// customer only; payments reads only the alerts.
    #[test]
    fn spend_users_have_their_subjects_only() {
        let conf = render(
            &users(&["acme"]).unwrap(),
            &Names {
                prefix: "usage",
                dlq_prefix: "usage_dlq",
                stream: "USAGE",
                spend_root: "tally",
            },
        );
        let line = |user: &str| {
            conf.lines()
                .find(|l| l.contains(&format!("user: \"{user}\"")))
                .unwrap()
                .to_owned()
        };
        let spend = line("tally-spend");
        assert!(spend.contains(r#"subscribe: { allow: ["_INBOX.tally-spend.>", "tally.authorize.*.*", "tally.balance.*"] }, allow_responses: true"#), "{spend}");
        for s in [
            "usage_holds.>",
            "tally.alerts.>",
            "$KV.USAGE_SPEND.>",
            "$JS.API.DIRECT.GET.KV_USAGE_AGGREGATORS.>",
            "$JS.API.CONSUMER.*.USAGE_FEED.>",
        ] {
            assert!(spend.contains(&format!("\"{s}\"")), "{s}: {spend}");
        }
        assert!(
            !spend.contains("\"$KV.USAGE_AGGREGATORS.>\""),
            "the aggregators' lease is read only: {spend}"
        );
        assert!(!spend.contains("\"usage.>\""), "{spend}");
        let agent = line("agent-acme");
        assert!(
            agent.contains(r#"["usage.acme.>", "tally.authorize.acme.>", "tally.balance.acme"]"#),
            "{agent}"
        );
        assert!(!agent.contains("allow_responses"), "{agent}");
        let payments = line("tally-payments");
        assert!(
            payments.contains("\"$JS.ACK.USAGE_ALERTS.>\"")
                && payments.contains("\"tally.balance.>\""),
            "{payments}"
        );
        assert!(!payments.contains("\"$JS.ACK.>\""), "{payments}");
        let gateway = line("tally-gateway");
        assert!(gateway.contains("\"tally.authorize.>\""), "{gateway}");
    }

    #[test]
    fn customer_ids_are_validated() {
        assert!(users(&["a.b"]).is_err());
        assert!(users(&["*"]).is_err());
    }
}
