//! librdkafka settings of a source's consumer that weir manages itself: a source's
//! `properties` may not set them otherwise, since the source would then read or commit
//! differently from what it counts on, without a word.

/// Why a source's `properties` cannot hold `key: value`, with what to do instead; `None` when
/// it can. The key is librdkafka's (case-sensitive, as librdkafka takes it).
pub fn refused_property(key: &str, value: &str) -> Option<String> {
    // (librdkafka reads its enums and booleans without regard to case)
    let v = value.to_ascii_lowercase();
    match key {
        "group.id" => Some(
            "`group.id` is the source's `group_id`: set that instead (weir reads the group's \
             offsets and, in a worker pool, its claims under `group_id`)"
                .into(),
        ),
        "enable.auto.commit" if !["false", "f", "0"].contains(&v.as_str()) => Some(format!(
            "`enable.auto.commit: {value}` would let librdkafka commit the offsets of records \
             whose rows are not written yet, and a restart would skip them; weir commits the \
             group's offsets itself once the rows are durable: remove the setting"
        )),
        "auto.offset.reset" if !RESETS.contains(&v.as_str()) => Some(format!(
            "`auto.offset.reset: {value}` is not supported: weir moves a position that is out \
             of range itself, to the log start (`earliest`) or the end (`latest`), logs an \
             error and counts the records skipped in `weir_records_expired_total` (alert on \
             it); set one of {}, or leave it to `start_from`",
            RESETS.join(", ")
        )),
        _ => None,
    }
}

/// The values of `auto.offset.reset` a source accepts (librdkafka's names for the log start
/// and the end; see `expired::resets_to_end`).
const RESETS: [&str; 6] = [
    "earliest",
    "smallest",
    "beginning",
    "latest",
    "largest",
    "end",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_weir_manages_are_refused_with_what_to_do() {
        assert!(refused_property("group.id", "x").is_some_and(|m| m.contains("`group_id`")));
        assert!(refused_property("enable.auto.commit", "true")
            .is_some_and(|m| m.contains("remove the setting")));
        assert!(refused_property("enable.auto.commit", "False").is_none());
        assert!(refused_property("enable.auto.commit", "0").is_none());
        for bad in ["error", "none", "latest2"] {
            assert!(
                refused_property("auto.offset.reset", bad)
                    .is_some_and(|m| m.contains("weir_records_expired_total")),
                "{bad}"
            );
        }
        for good in [
            "earliest",
            "Smallest",
            "beginning",
            "LATEST",
            "largest",
            "end",
        ] {
            assert_eq!(refused_property("auto.offset.reset", good), None, "{good}");
        }
        assert_eq!(refused_property("security.protocol", "SASL_SSL"), None);
    }
}
