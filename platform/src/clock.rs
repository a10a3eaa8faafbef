//! The wall clock, read in one place: Unix milliseconds, as every stage stores times. It
//! never sleeps or schedules; tests that need another time pass their own `fn() -> i64`.

/// Now, in Unix milliseconds (0 before 1970, `i64::MAX` past the year 292 million).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2026_and_moves_forward() {
        let a = super::now_ms();
        assert!(a > 1_767_225_600_000, "{a}");
        assert!(super::now_ms() >= a);
    }
}
