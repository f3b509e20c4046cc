//! Fuzzes the config reader in all three formats (the first byte picks JSON, YAML or TOML):
//! no panic on any input; what is accepted can be validated, turned into a filter and
//! queried. For JSON, the reader must accept exactly the documents serde_json accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sctrace_filter::{explain, parse_str, ConfigError, Format, OutgoingFilter, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = match selector % 3 {
        0 => Format::Json,
        1 => Format::Yaml,
        _ => Format::Toml,
    };
    let result = parse_str(text, format, "fuzz.json");

    if format == Format::Json {
        let reference = serde_json::from_str::<serde_json::Value>(text);
        let ours_syntax_error = matches!(&result, Err(ConfigError::Syntax(_)));
        let limit_hit = matches!(&result, Err(ConfigError::Syntax(d)) if d.message.contains("nested more than"))
            || matches!(&reference, Err(e) if e.to_string().contains("recursion limit"));
        let bom = text.starts_with('\u{feff}');
        if !limit_hit && !bom {
            assert_eq!(
                ours_syntax_error,
                reference.is_err(),
                "JSON acceptance differs from serde_json: ours {result:?}, serde_json {reference:?}"
            );
        }
    }

    match result {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                let _ = warning.to_string();
            }
            let config = loaded.config;
            let _ = config.validate().map(|w| w.len());
            let filter = OutgoingFilter::new(&config.feature.network);
            let _ = filter.decide(Protocol::Tcp, "198.18.0.1:5432".parse().unwrap(), &["messages-db"]);
            let _ = filter.decide(Protocol::Udp, "[::1]:53".parse().unwrap(), &[]);
            let _ = filter.decide_dns("messages-db.svc.cluster.local.");
            let _ = filter.local_names();
            if let Ok(explanation) = explain(&config, "messages-db:5432", Protocol::Tcp) {
                let _ = explanation.to_string();
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("fuzz.json"), "{message}");
        }
    }
});
