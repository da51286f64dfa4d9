//! Small conversions from policy values (Kuma durations, int-or-string percentages, counts) to
//! protobuf values, shared by the builders.

use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use mesh_api::policies::common::{Duration as KumaDuration, IntOrString};
use mesh_api::ResourceType;

use super::PolicyError;

/// A std duration as a protobuf Duration.
pub(crate) fn pb_duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A policy duration as a std duration; negative ones (refused by validation) count as zero.
pub(crate) fn std_duration(d: &KumaDuration) -> std::time::Duration {
    d.to_std().unwrap_or_default()
}

/// A policy duration as a protobuf Duration (negative counts as zero).
pub(crate) fn duration(d: &KumaDuration) -> PbDuration {
    pb_duration(std_duration(d))
}

/// A count as `u32`, saturating (validation keeps counts positive and small).
pub(crate) fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(if n < 0 { 0 } else { u32::MAX })
}

/// A count as a protobuf `UInt32Value`.
pub(crate) fn uint32(n: i64) -> UInt32Value {
    UInt32Value { value: count(n) }
}

/// An int-or-string number (`10`, `"2.5"`), or an error naming the field.
pub(crate) fn decimal(
    value: &IntOrString,
    policy: ResourceType,
    field: &str,
) -> Result<f64, PolicyError> {
    value
        .decimal()
        .ok_or_else(|| PolicyError::new(policy, field, "must be a number"))
}

/// A percentage as Envoy's FractionalPercent, with the smallest exact denominator: integers per
/// hundred, two decimals per ten thousand, otherwise per million (rounded), as Kuma converts.
pub(crate) fn fractional_percent(percent: f64) -> FractionalPercent {
    let percent = percent.clamp(0.0, 100.0);
    let (numerator, denominator) = if percent.fract() == 0.0 {
        (percent, DenominatorType::Hundred)
    } else if (percent * 100.0).fract() == 0.0 {
        (percent * 100.0, DenominatorType::TenThousand)
    } else {
        ((percent * 10_000.0).round(), DenominatorType::Million)
    };
    FractionalPercent {
        numerator: numerator as u32,
        denominator: denominator as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_pick_the_exact_denominator() {
        let p = fractional_percent(55.0);
        assert_eq!(
            (p.numerator, p.denominator),
            (55, DenominatorType::Hundred as i32)
        );
        let p = fractional_percent(62.9);
        assert_eq!(
            (p.numerator, p.denominator),
            (6290, DenominatorType::TenThousand as i32)
        );
        let p = fractional_percent(33.3333);
        assert_eq!(
            (p.numerator, p.denominator),
            (333_333, DenominatorType::Million as i32)
        );
    }

    #[test]
    fn durations_and_counts() {
        let d = KumaDuration::parse("1m30.5s").unwrap();
        assert_eq!(
            duration(&d),
            PbDuration {
                seconds: 90,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            duration(&KumaDuration::parse("-1s").unwrap()),
            PbDuration::default()
        );
        assert_eq!(count(-3), 0);
        assert_eq!(count(i64::MAX), u32::MAX);
        assert_eq!(
            decimal(
                &IntOrString::String("x".into()),
                ResourceType::MeshRetry,
                "f"
            )
            .unwrap_err()
            .message,
            "must be a number"
        );
    }
}
