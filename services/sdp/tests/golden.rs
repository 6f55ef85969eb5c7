//! Golden SDP tests in the manner of rtpengine's `t/auto-daemon-tests.pl`: every
//! directory under `tests/golden/` is one case with
//!
//! - `input.sdp`: what a peer sent (documentation addresses, RFC 5737/3849),
//! - `plan.txt`: the relay's plans and the options (format below),
//! - `expected.sdp`: the exact bytes the anchoring rewrite must produce.
//!
//! For each case the runner checks that the input round-trips byte for byte, that
//! `anchor()` reports the expected change and produces `expected.sdp` exactly, that
//! the `o=` version went up by one exactly when something changed, that the output
//! parses, and that anchoring the output again with the same plans changes nothing
//! (a re-offer on the same ports must not bump the version).
//!
//! `plan.txt`, one item per line (`#` starts a comment):
//!
//! ```text
//! changed true|false                      required: what anchor() must return
//! keep_ice true|false                     AnchorOptions fields; default otherwise
//! replace_origin true|false
//! replace_session_connection true|false
//! add_rtcp_attribute true|false
//! plan <index> <address> <rtp port> <rtcp port> mux|nomux
//! media <index> key=value ...             checks on input's media(); keys: kind port
//!     proto formats(a,b) connection(ip|none) hold direction rtcp(none|port|port@ip)
//!     rtcp_mux ice rejected
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use trunkline_sdp::{parse, AnchorOptions, Direction, MediaInfo, MediaPlan};

struct Case {
    changed: bool,
    opts: AnchorOptions,
    plans: Vec<MediaPlan>,
    media_checks: Vec<(usize, Vec<(String, String)>)>,
}

fn bool_of(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

fn parse_plan(text: &str) -> Result<Case, String> {
    let mut changed = None;
    let mut opts = AnchorOptions::default();
    let mut plans = Vec::new();
    let mut media_checks = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |e: String| format!("plan.txt line {}: {e}", n + 1);
        let num = |s: &str| s.parse::<u16>().map_err(|e| at(format!("{s:?}: {e}")));
        match words[..] {
            ["changed", v] => changed = Some(bool_of(v).map_err(at)?),
            ["keep_ice", v] => opts.keep_ice = bool_of(v).map_err(at)?,
            ["replace_origin", v] => opts.replace_origin = bool_of(v).map_err(at)?,
            ["replace_session_connection", v] => {
                opts.replace_session_connection = bool_of(v).map_err(at)?
            }
            ["add_rtcp_attribute", v] => opts.add_rtcp_attribute = bool_of(v).map_err(at)?,
            ["plan", index, address, rtp, rtcp, mux] => plans.push(MediaPlan {
                index: index.parse().map_err(|e| at(format!("index: {e}")))?,
                address: address.parse().map_err(|e| at(format!("address: {e}")))?,
                rtp_port: num(rtp)?,
                rtcp_port: num(rtcp)?,
                rtcp_mux: match mux {
                    "mux" => true,
                    "nomux" => false,
                    other => return Err(at(format!("mux or nomux, got {other:?}"))),
                },
            }),
            ["media", index, ref checks @ ..] => {
                let index = index.parse().map_err(|e| at(format!("index: {e}")))?;
                let mut kv = Vec::new();
                for c in checks {
                    let (k, v) = c
                        .split_once('=')
                        .ok_or_else(|| at(format!("{c:?} is not key=value")))?;
                    kv.push((k.to_owned(), v.to_owned()));
                }
                media_checks.push((index, kv));
            }
            _ => return Err(at(format!("cannot read {line:?}"))),
        }
    }
    Ok(Case {
        changed: changed.ok_or("plan.txt: missing `changed true|false`")?,
        opts,
        plans,
        media_checks,
    })
}

fn check_media(info: &MediaInfo, key: &str, want: &str) -> Result<(), String> {
    let got = match key {
        "kind" => info.kind.clone(),
        "port" => info.port.to_string(),
        "proto" => info.proto.clone(),
        "formats" => info.formats.join(","),
        "connection" => info.connection.map_or("none".into(), |a| a.to_string()),
        "hold" => info.hold_zero_address.to_string(),
        "direction" => match info.direction {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
        .into(),
        "rtcp" => match info.rtcp {
            None => "none".into(),
            Some((p, None)) => p.to_string(),
            Some((p, Some(a))) => format!("{p}@{a}"),
        },
        "rtcp_mux" => info.rtcp_mux.to_string(),
        "ice" => info.has_ice.to_string(),
        "rejected" => info.rejected.to_string(),
        other => return Err(format!("unknown media check {other:?}")),
    };
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "media {} {key}: expected {want}, got {got}",
            info.index
        ))
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .replace('\r', "\\r")
        .replace('\n', "\\n\n")
}

fn run_case(dir: &Path) -> Result<(), String> {
    let read = |name: &str| {
        fs::read(dir.join(name)).map_err(|e| format!("{name} missing or unreadable: {e}"))
    };
    let input = read("input.sdp")?;
    let plan_text = String::from_utf8(read("plan.txt")?).map_err(|e| e.to_string())?;
    let expected = read("expected.sdp")?;
    let case = parse_plan(&plan_text)?;

    let mut sdp = parse(&input).map_err(|e| format!("input does not parse: {e}"))?;
    if sdp.to_bytes() != input {
        return Err("input does not round-trip byte for byte".into());
    }
    let media = sdp.media();
    for (index, checks) in &case.media_checks {
        let info = media
            .get(*index)
            .ok_or(format!("no m-line {index} in input"))?;
        for (k, v) in checks {
            check_media(info, k, v)?;
        }
    }
    let before = sdp.origin_version();
    let changed = sdp.anchor(&case.plans, &case.opts);
    let out = sdp.to_bytes();
    if out != expected {
        return Err(format!(
            "output differs from expected.sdp\n--- expected\n{}--- got\n{}",
            show(&expected),
            show(&out)
        ));
    }
    if changed != case.changed {
        return Err(format!(
            "anchor() returned {changed}, plan.txt says {}",
            case.changed
        ));
    }
    let after = sdp.origin_version();
    let want_version = if changed {
        before.map(|v| v + 1)
    } else {
        before
    };
    if after != want_version {
        return Err(format!(
            "o= version {before:?} -> {after:?}, want {want_version:?}"
        ));
    }
    let mut again = parse(&out).map_err(|e| format!("output does not parse: {e}"))?;
    if again.anchor(&case.plans, &case.opts) {
        return Err(format!(
            "anchoring the output again changed it:\n{}",
            show(&again.to_bytes())
        ));
    }
    Ok(())
}

#[test]
fn golden_cases() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 20,
        "expected the golden cases, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        match run_case(dir) {
            Ok(()) => println!("golden {name}: ok"),
            Err(e) => failures.push(format!("golden {name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n\n")
    );
}
