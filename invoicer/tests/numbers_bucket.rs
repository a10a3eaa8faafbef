//! Issue 16, finding 4: the invoice-number bucket belongs to one database. Every invoicer on
//! one NATS used the default bucket `INVOICE_NUMBERS`, so a test or staging database advanced
//! production's gapless counter (its first invoice got production's next number). Now the
//! bucket is named from `nats.namespace`, and an invoicer of another database is refused,
//! naming the setting, before it numbers anything.

use tally_invoicer::numbering::{NumberingError, Numbers};
use tally_invoicer::InvoicerConfig;
use tally_platform::testkit::TestEnv;
use tally_platform::NatsConfig;

#[tokio::test]
async fn a_second_database_cannot_take_numbers_from_the_first_ones_bucket() {
    let env = TestEnv::new("numbers_bucket_owner").await;
    let bucket = format!("N{}", env.nats.stream);
    let connect = || async_nats::connect(&env.nats.url);

    let production = Numbers::open_for(connect().await.expect("nats"), &bucket, 1, "tally")
        .await
        .expect("the first database claims the bucket");
    let first = production
        .assign("tally", &["inv-1".to_owned()])
        .await
        .expect("numbered");
    assert_eq!(first["inv-1"], 1);

    let staging = Numbers::open_for(connect().await.expect("nats"), &bucket, 1, "tally_staging")
        .await
        .err()
        .expect("another database is refused");
    assert!(
        matches!(&staging, NumberingError::Owner { owner, .. } if owner == "tally"),
        "{staging}"
    );
    assert!(staging.to_string().contains("nats.namespace"), "{staging}");

    // production reopens its bucket and its counter went on where it was
    let again = Numbers::open_for(connect().await.expect("nats"), &bucket, 1, "tally")
        .await
        .expect("the owner reopens");
    let next = again
        .assign("tally", &["inv-2".to_owned()])
        .await
        .expect("numbered");
    assert_eq!(next["inv-2"], 2);

    let _ = async_nats::jetstream::new(connect().await.expect("nats"))
        .delete_key_value(&bucket)
        .await;
    env.cleanup().await;
}

#[test]
fn the_bucket_is_named_from_the_namespace_unless_set() {
    let cfg = InvoicerConfig::default();
    assert_eq!(
        cfg.numbers_bucket(&NatsConfig::default().with_namespace("staging")),
        "STAGING_INVOICE_NUMBERS"
    );
    assert_eq!(
        cfg.numbers_bucket(&NatsConfig::default()),
        "INVOICE_NUMBERS"
    );
    let explicit = InvoicerConfig {
        numbers_bucket: "NUMS".into(),
        ..InvoicerConfig::default()
    };
    assert_eq!(explicit.numbers_bucket(&NatsConfig::default()), "NUMS");
}
