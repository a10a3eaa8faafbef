//! Feature flags: billing features switched on or off by configuration (`[features]` in the
//! file, or `TALLY_FEATURES__<FLAG>=true|false` in the environment) without a rebuild.
//!
//! Every flag defaults to on. A stage reads the flags it cares about at start-up; this module
//! only holds the switches, never the behaviour behind them.

use serde::Deserialize;

/// The `[features]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Features {
    /// Taxes computed on charges and shown on invoices.
    pub tax: bool,
    /// Payment retries and overdue reminders.
    pub dunning: bool,
    /// The customer portal.
    pub portal: bool,
    /// Late usage for finalized periods billed as adjustments on the next invoice.
    pub late_usage_adjustments: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            tax: true,
            dunning: true,
            portal: true,
            late_usage_adjustments: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_str_with_env;
    use std::path::Path;

    #[derive(Deserialize)]
    struct Cfg {
        #[serde(default)]
        features: Features,
    }

    #[test]
    fn every_flag_defaults_on_and_the_environment_switches_one_off() {
        let cfg: Cfg = from_str_with_env("", Path::new("t.toml"), Vec::new()).unwrap();
        assert_eq!(cfg.features, Features::default());
        let env = vec![("TALLY_FEATURES__DUNNING".to_owned(), "false".to_owned())];
        let cfg: Cfg =
            from_str_with_env("[features]\ntax = false\n", Path::new("t.toml"), env).unwrap();
        assert!(!cfg.features.tax && !cfg.features.dunning);
        assert!(cfg.features.portal && cfg.features.late_usage_adjustments);
    }

    #[test]
    fn an_unknown_flag_is_refused_by_name() {
        let err = from_str_with_env::<Cfg>(
            "[features]\ntaxes = false\n",
            Path::new("t.toml"),
            Vec::new(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("taxes"), "{err}");
    }
}
