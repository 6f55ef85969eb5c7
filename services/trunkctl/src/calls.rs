//! `trunkctl calls …`: list, show, watch and hang up a node's calls, and how they print.
//! JSON/YAML field names are the proto's JSON names (as in `output`).

use serde_json::{json, Value};
use trunkline_proto::admin::v1::{
    Call, CallEnd, CallEvent, CallEventType, CallState, Leg, MediaStream, Party,
};

use crate::output::{rfc3339, Format};

/// The state's name without its prefix: `ESTABLISHED`.
pub fn state_name(state: i32) -> &'static str {
    match CallState::try_from(state) {
        Ok(CallState::Setup) => "SETUP",
        Ok(CallState::Ringing) => "RINGING",
        Ok(CallState::EarlyMedia) => "EARLY_MEDIA",
        Ok(CallState::Established) => "ESTABLISHED",
        Ok(CallState::Held) => "HELD",
        Ok(CallState::Ended) => "ENDED",
        _ => "UNKNOWN",
    }
}

/// `--state` on the command line: the state's name, any case.
pub fn parse_state(s: &str) -> Result<CallState, String> {
    let upper = s.to_ascii_uppercase().replace('-', "_");
    let name = upper.strip_prefix("CALL_STATE_").unwrap_or(&upper);
    CallState::from_str_name(&format!("CALL_STATE_{name}"))
        .filter(|s| *s != CallState::Unspecified)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a call state (setup, ringing, early_media, established, held, ended)"
            )
        })
}

fn party_name(p: i32) -> &'static str {
    match Party::try_from(p) {
        Ok(Party::Caller) => "CALLER",
        Ok(Party::Callee) => "CALLEE",
        Ok(Party::Node) => "NODE",
        _ => "",
    }
}

/// What `calls transfer` prints when the transfer is done: the new party.
pub fn transferred_line(call: &Call, caller_side: bool) -> String {
    let leg = if caller_side {
        &call.caller
    } else {
        &call.callee
    };
    let leg = leg.clone().unwrap_or_default();
    format!(
        "{}  transferred: {} is now {} via {} (Call-ID {})\n",
        call.id,
        if caller_side { "caller" } else { "callee" },
        dash(&leg.peer),
        dash(&leg.trunk),
        dash(&leg.sip_call_id),
    )
}

fn event_name(t: i32) -> &'static str {
    match CallEventType::try_from(t) {
        Ok(CallEventType::Existing) => "EXISTING",
        Ok(CallEventType::Synced) => "SYNCED",
        Ok(CallEventType::Created) => "CREATED",
        Ok(CallEventType::Ringing) => "RINGING",
        Ok(CallEventType::EarlyMedia) => "EARLY_MEDIA",
        Ok(CallEventType::Answered) => "ANSWERED",
        Ok(CallEventType::Held) => "HELD",
        Ok(CallEventType::Resumed) => "RESUMED",
        Ok(CallEventType::Ended) => "ENDED",
        Ok(CallEventType::EventsLost) => "EVENTS_LOST",
        Ok(CallEventType::Transferred) => "TRANSFERRED",
        _ => "UNKNOWN",
    }
}

fn duration_json(d: Option<&prost_types::Duration>) -> Value {
    match d {
        Some(d) => json!(format!("{}.{:03}s", d.seconds, d.nanos / 1_000_000)),
        None => Value::Null,
    }
}

fn ts_json(ts: Option<&prost_types::Timestamp>) -> Value {
    match ts {
        Some(_) => json!(rfc3339(ts)),
        None => Value::Null,
    }
}

fn stream_json(m: &MediaStream) -> Value {
    json!({
        "index": m.index,
        "media": m.media,
        "relayAddress": m.relay_address,
        "advertisedAddress": m.advertised_address,
        "latchedAddress": m.latched_address,
        "rtpPackets": m.rtp_packets.to_string(),
        "rtpBytes": m.rtp_bytes.to_string(),
        "rtpPacketsLost": m.rtp_packets_lost.to_string(),
        "rtpErrors": m.rtp_errors.to_string(),
        "rtcpPackets": m.rtcp_packets.to_string(),
        "lastPacketMsAgo": m.last_packet_ms_ago.map(|v| v.to_string()),
        "rttMs": m.rtt_ms,
    })
}

fn leg_json(l: &Leg) -> Value {
    json!({
        "sipCallId": l.sip_call_id,
        "peer": l.peer,
        "transport": l.transport,
        "trunk": l.trunk,
        "media": l.media.iter().map(stream_json).collect::<Vec<_>>(),
    })
}

fn end_json(e: &CallEnd) -> Value {
    json!({
        "status": e.status,
        "cause": e.cause,
        "endedBy": format!("PARTY_{}", party_name(e.ended_by)),
        "total": duration_json(e.total.as_ref()),
        "talk": duration_json(e.talk.as_ref()),
    })
}

/// A call as the proto's JSON mapping writes it.
pub fn call_json(c: &Call) -> Value {
    json!({
        "id": c.id,
        "nodeId": c.node_id,
        "state": format!("CALL_STATE_{}", state_name(c.state)),
        "callerNumber": c.caller_number,
        "calleeNumber": c.callee_number,
        "caller": c.caller.as_ref().map(leg_json),
        "callee": c.callee.as_ref().map(leg_json),
        "createdAt": ts_json(c.created_at.as_ref()),
        "ringingAt": ts_json(c.ringing_at.as_ref()),
        "answeredAt": ts_json(c.answered_at.as_ref()),
        "endedAt": ts_json(c.ended_at.as_ref()),
        "mediaAnchored": c.media_anchored,
        "heldBy": (!party_name(c.held_by).is_empty()).then(|| format!("PARTY_{}", party_name(c.held_by))),
        "end": c.end.as_ref().map(end_json),
    })
}

pub fn event_json(e: &CallEvent) -> Value {
    json!({
        "type": format!("CALL_EVENT_TYPE_{}", event_name(e.r#type)),
        "callId": e.call_id,
        "sequence": e.sequence,
        "at": ts_json(e.at.as_ref()),
        "call": e.call.as_ref().map(call_json),
        "status": e.status,
        "by": (!party_name(e.by).is_empty()).then(|| format!("PARTY_{}", party_name(e.by))),
        "eventsLost": e.events_lost.to_string(),
    })
}

/// Seconds since a timestamp, as of `now` (for "answered 12s ago" columns).
fn since(ts: Option<&prost_types::Timestamp>, now: &prost_types::Timestamp) -> String {
    match ts {
        Some(t) => format!("{}s", (now.seconds - t.seconds).max(0)),
        None => "-".to_string(),
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `calls list` as a table: one call per row.
pub fn calls_table(calls: &[Call], now: &prost_types::Timestamp) -> String {
    let rows: Vec<Vec<String>> = calls
        .iter()
        .map(|c| {
            let from = c.caller.as_ref().map_or("", |l| l.trunk.as_str());
            let to = c.callee.as_ref().map_or("", |l| l.trunk.as_str());
            vec![
                c.id.clone(),
                state_name(c.state).to_string(),
                dash(&c.caller_number).to_string(),
                dash(&c.callee_number).to_string(),
                if from.is_empty() { "access" } else { from }.to_string(),
                dash(to).to_string(),
                since(c.created_at.as_ref(), now),
                since(c.answered_at.as_ref(), now),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATE", "CALLER", "CALLEE", "FROM", "TO", "AGE", "TALK",
        ],
        &rows,
    )
}

/// `calls get` as key/value rows, then the media per leg.
pub fn call_detail(c: &Call) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("ID".into(), c.id.clone()),
        ("NODE".into(), c.node_id.clone()),
        ("STATE".into(), state_name(c.state).to_string()),
        ("CALLER".into(), dash(&c.caller_number).to_string()),
        ("CALLEE".into(), dash(&c.callee_number).to_string()),
        ("CREATED".into(), rfc3339(c.created_at.as_ref())),
    ];
    for (k, ts) in [
        ("RINGING", &c.ringing_at),
        ("ANSWERED", &c.answered_at),
        ("ENDED", &c.ended_at),
    ] {
        if ts.is_some() {
            rows.push((k.into(), rfc3339(ts.as_ref())));
        }
    }
    if c.held_by != 0 {
        rows.push(("HELD BY".into(), party_name(c.held_by).to_string()));
    }
    if let Some(e) = &c.end {
        rows.push((
            "END".into(),
            format!(
                "{} {} by {} (total {}, talk {})",
                e.status,
                e.cause,
                party_name(e.ended_by),
                duration_json(e.total.as_ref()).as_str().unwrap_or("-"),
                duration_json(e.talk.as_ref()).as_str().unwrap_or("-"),
            ),
        ));
    }
    rows.push((
        "MEDIA".into(),
        if c.media_anchored {
            "anchored"
        } else {
            "direct"
        }
        .to_string(),
    ));
    for (name, leg) in [("A-LEG", &c.caller), ("B-LEG", &c.callee)] {
        let Some(l) = leg else { continue };
        rows.push((
            name.into(),
            format!(
                "{} {} trunk={} call-id={}",
                l.transport,
                l.peer,
                dash(&l.trunk),
                l.sip_call_id
            ),
        ));
        for m in &l.media {
            rows.push((
                format!("  {} #{}", m.media, m.index),
                format!(
                    "relay {} latched {} rtp {} pkts {} bytes lost {} errors {}",
                    dash(&m.relay_address),
                    dash(&m.latched_address),
                    m.rtp_packets,
                    m.rtp_bytes,
                    m.rtp_packets_lost,
                    m.rtp_errors
                ),
            ));
        }
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// Turns `calls watch` events into lines. Only a call's first event (CREATED or
/// EXISTING) and its last (ENDED) carry the call itself, so the numbers are remembered
/// in between to put on every line.
#[derive(Default)]
pub struct Watching {
    numbers: std::collections::HashMap<String, (String, String)>,
}

impl Watching {
    /// One line for an event.
    pub fn line(&mut self, e: &CallEvent) -> String {
        let at = rfc3339(e.at.as_ref());
        let ty = event_name(e.r#type);
        match CallEventType::try_from(e.r#type) {
            Ok(CallEventType::Synced) => return format!("{at}  {ty}"),
            Ok(CallEventType::EventsLost) => {
                return format!("{at}  {ty}  {} events", e.events_lost)
            }
            _ => {}
        }
        if let Some(c) = &e.call {
            self.numbers.insert(
                e.call_id.clone(),
                (c.caller_number.clone(), c.callee_number.clone()),
            );
        }
        let (caller, callee) = self.numbers.get(&e.call_id).cloned().unwrap_or_default();
        let mut line = format!(
            "{at}  {ty:<11}  {}  #{}  {} -> {}",
            e.call_id,
            e.sequence,
            dash(&caller),
            dash(&callee),
        );
        if let Some(c) = &e.call {
            line.push_str(&format!("  {}", state_name(c.state)));
        }
        if e.status != 0 {
            line.push_str(&format!("  status={}", e.status));
        }
        if e.by != 0 {
            line.push_str(&format!("  by={}", party_name(e.by)));
        }
        if let Some(end) = e.call.as_ref().and_then(|c| c.end.as_ref()) {
            line.push_str(&format!(
                "  cause={} total={} talk={}",
                end.cause,
                duration_json(end.total.as_ref()).as_str().unwrap_or("-"),
                duration_json(end.talk.as_ref()).as_str().unwrap_or("-"),
            ));
        }
        if CallEventType::try_from(e.r#type) == Ok(CallEventType::Ended) {
            self.numbers.remove(&e.call_id);
        }
        line
    }
}

/// Prints a document in the chosen format (`table` given as already rendered).
pub fn print(value: &Value, table: impl FnOnce() -> String, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

/// Writes one watch event: a line, one compact JSON object per line, or a YAML document.
pub fn write_event(
    out: &mut impl std::io::Write,
    w: &mut Watching,
    e: &CallEvent,
    format: Format,
) -> anyhow::Result<()> {
    match format {
        Format::Table => writeln!(out, "{}", w.line(e))?,
        Format::Json => writeln!(out, "{}", serde_json::to_string(&event_json(e))?)?,
        Format::Yaml => write!(out, "---\n{}", serde_yaml_ng::to_string(&event_json(e))?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            id: "n1-1f".into(),
            node_id: "n1".into(),
            state: CallState::Established as i32,
            caller_number: "1001".into(),
            callee_number: "4930123".into(),
            caller: Some(Leg {
                sip_call_id: "abc@host".into(),
                peer: "127.0.0.1:5070".into(),
                transport: "udp".into(),
                trunk: String::new(),
                media: vec![MediaStream {
                    index: 0,
                    media: "audio".into(),
                    rtp_packets: 50,
                    ..MediaStream::default()
                }],
            }),
            callee: Some(Leg {
                trunk: "carrier".into(),
                ..Leg::default()
            }),
            created_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
            answered_at: Some(prost_types::Timestamp {
                seconds: 103,
                nanos: 0,
            }),
            ..Call::default()
        }
    }

    #[test]
    fn states_parse_in_any_case_and_refuse_others() {
        assert_eq!(parse_state("established"), Ok(CallState::Established));
        assert_eq!(parse_state("early-media"), Ok(CallState::EarlyMedia));
        assert_eq!(parse_state("CALL_STATE_HELD"), Ok(CallState::Held));
        assert!(parse_state("unspecified").is_err());
        assert!(parse_state("talking").is_err());
    }

    #[test]
    fn the_list_table_is_aligned() {
        let now = prost_types::Timestamp {
            seconds: 110,
            nanos: 0,
        };
        let t = calls_table(&[call()], &now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("STATE"), lines[1].find("ESTABLISHED"));
        assert!(lines[1].contains("1001"));
        assert!(lines[1].contains("access"));
        assert!(lines[1].contains("carrier"));
        assert!(lines[1].ends_with("10s  7s"), "{}", lines[1]);
    }

    #[test]
    fn json_follows_the_proto_names() {
        let j = call_json(&call());
        assert_eq!(j["state"], "CALL_STATE_ESTABLISHED");
        assert_eq!(j["caller"]["media"][0]["rtpPackets"], "50");
        assert_eq!(j["callee"]["trunk"], "carrier");
        assert_eq!(j["end"], Value::Null);
    }

    #[test]
    fn an_event_line_says_what_happened_to_which_call() {
        let e = CallEvent {
            r#type: CallEventType::Ringing as i32,
            call_id: "n1-1f".into(),
            sequence: 2,
            call: Some(call()),
            status: 180,
            ..CallEvent::default()
        };
        let mut w = Watching::default();
        let created = CallEvent {
            r#type: CallEventType::Created as i32,
            call_id: "n1-1f".into(),
            sequence: 1,
            call: Some(call()),
            ..CallEvent::default()
        };
        assert!(w.line(&created).contains("CREATED"));
        let line = w.line(&CallEvent { call: None, ..e });
        assert!(line.contains("RINGING"), "{line}");
        assert!(line.contains("n1-1f  #2  1001 -> 4930123"), "{line}");
        assert!(line.contains("status=180"), "{line}");
    }
}
