//! The one place ng vocabulary meets the engine's types: [`NgEngine`] for [`crate::Relay`].

use super::{
    CallSummary, EngineError, EngineTotals, MediaFlags, MediaSummary, NgEngine, StreamSummary,
};
use crate::{CallStats, Flags, MediaError, Relay, StreamStats};

fn flags(f: &MediaFlags) -> Flags {
    Flags {
        trust_address: f.trust_address,
        received_from: f.received_from,
        symmetric: f.symmetric,
        asymmetric: f.asymmetric,
        strict_source: f.strict_source,
        media_handover: f.media_handover,
        port_latching: f.port_latching,
        keep_ice: f.keep_ice,
        rtcp_mux_offer: f.rtcp_mux_offer,
        rtcp_mux_demux: f.rtcp_mux_demux,
        replace_origin: f.replace_origin,
        replace_session_connection: f.replace_session_connection,
        direction: f.direction.clone(),
    }
}

/// rtpengine's wording where it has one (proxies log it, operators grep for it).
fn error(e: MediaError) -> EngineError {
    match e {
        MediaError::UnknownCall(_) | MediaError::UnknownTag(_) => EngineError::UnknownCall,
        MediaError::Sdp(e) => EngineError::Failed(format!("Failed to parse SDP: {e}")),
        MediaError::NoPorts => EngineError::Failed("Ran out of ports".into()),
        other => EngineError::Failed(other.to_string()),
    }
}

fn stream(s: &StreamStats) -> StreamSummary {
    StreamSummary {
        packets: s.packets,
        bytes: s.bytes,
        errors: s.errors,
        last_packet_ms_ago: s.last_packet_ms_ago,
        latched: s.latched,
        local_port: s.local_port,
    }
}

fn summary(c: CallStats) -> CallSummary {
    CallSummary {
        call_id: c.call_id,
        created_ms_ago: c.created_ms_ago,
        last_signal_ms_ago: c.last_signal_ms_ago,
        tags: c.tags,
        media: c
            .streams
            .iter()
            .map(|p| MediaSummary {
                kind: p.media.clone(),
                sides: vec![stream(&p.offerer), stream(&p.answerer)],
            })
            .collect(),
    }
}

impl NgEngine for Relay {
    fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        f: &MediaFlags,
    ) -> Result<Vec<u8>, EngineError> {
        Relay::offer(self, call_id, from_tag, sdp, &flags(f)).map_err(error)
    }

    fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        f: &MediaFlags,
    ) -> Result<Vec<u8>, EngineError> {
        Relay::answer(self, call_id, from_tag, to_tag, sdp, &flags(f)).map_err(error)
    }

    fn delete(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
    ) -> Result<CallSummary, EngineError> {
        Relay::delete(self, call_id, from_tag, to_tag)
            .map(summary)
            .map_err(error)
    }

    fn query(&self, call_id: &str) -> Option<CallSummary> {
        Relay::query(self, call_id).map(summary)
    }

    fn list(&self, limit: usize) -> Vec<String> {
        Relay::list(self, limit)
    }

    fn totals(&self) -> EngineTotals {
        let t = Relay::totals(self);
        EngineTotals {
            sessions: t.sessions,
            current_sessions: t.current_sessions,
            packets_relayed: t.packets_relayed,
            bytes_relayed: t.bytes_relayed,
            packets_dropped: t.packets_dropped,
            ports_in_use: t.ports_in_use,
            ports_resting: t.ports_resting,
            timeouts: t.timeouts,
        }
    }
}
