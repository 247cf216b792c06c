use super::*;

#[test]
fn start_from_parses_every_form() {
    assert_eq!(parse_start_from("earliest"), Some(NatsStartFrom::Earliest));
    assert_eq!(parse_start_from("latest"), Some(NatsStartFrom::Latest));
    assert_eq!(parse_start_from("42"), Some(NatsStartFrom::Sequence(42)));
    assert_eq!(parse_start_from("0"), None);
    assert_eq!(
        parse_start_from("2026-11-24T10:00:00Z"),
        Some(NatsStartFrom::Time(1_795_514_400_000))
    );
    assert_eq!(parse_start_from("yesterday"), None);
}
