//! Log words, a leaf: durations and gRPC status codes as log lines, errors and traces show them.
//! Imports nothing of the crate.

/// A duration as a log line or an error shows it: to the millisecond, in the largest unit that
/// reads well (`58ms`, `2.5s`, `1m 30s`), never `58ms 463us 162ns`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros().max(1));
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let text = format!("{:.3}", d.as_secs_f64());
        return format!("{}s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

/// The canonical name of a gRPC status code (`UNAVAILABLE`), as logs and traces show it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        let d = |ns: u64| human_duration(std::time::Duration::from_nanos(ns));
        assert_eq!(d(58_463_162), "58ms");
        assert_eq!(d(0), "0ms");
        assert_eq!(d(12_345), "12us");
        assert_eq!(d(2_500_000_000), "2.5s");
        assert_eq!(d(3_000_000_000), "3s");
        assert_eq!(d(3_041_700_000), "3.042s");
        assert_eq!(d(90_400_000_000), "1m 30s");
    }

    #[test]
    fn every_grpc_code_has_its_canonical_name() {
        let names: Vec<&str> = (0..=16)
            .map(|n| grpc_code_name(tonic::Code::from_i32(n)))
            .collect();
        assert_eq!(names[0], "OK");
        assert_eq!(names[3], "INVALID_ARGUMENT");
        assert_eq!(names[14], "UNAVAILABLE");
        assert_eq!(names[16], "UNAUTHENTICATED");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 17);
    }
}
