#!/usr/bin/env python3
"""Writes a G.711 u-law (PCMU, PT 0) RTP pcap for SIPp's play_pcap_audio: a 440 Hz tone,
20 ms packets (160 samples), 50 packets/s. Standard library only.

    python3 make_pcap.py OUT.pcap [SECONDS]   (default 12 s)

SIPp replays the UDP payloads with the pcap's timing and rewrites the addresses, so the
addresses/ports written here (192.0.2.10:7078 -> 192.0.2.20:7078) do not matter.
"""
import math
import struct
import sys


def ulaw(sample: int) -> int:
    """G.711 u-law encoding of a 16-bit linear sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "pcmu.pcap"
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 12.0
    src, dst = bytes([192, 0, 2, 10]), bytes([192, 0, 2, 20])
    sport = dport = 7078
    ssrc = 0x54524B4C
    n = int(secs * 50)
    with open(out, "wb") as f:
        # pcap global header: magic, v2.4, tz 0, sigfigs 0, snaplen, linktype 1 (Ethernet)
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        phase = 0
        for i in range(n):
            payload = bytes(
                ulaw(int(8000 * math.sin(2 * math.pi * 440 * (phase + k) / 8000))) for k in range(160)
            )
            phase += 160
            rtp = struct.pack("!BBHII", 0x80, 0x80 if i == 0 else 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, ssrc) + payload
            udp_len = 8 + len(rtp)
            pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
            udp_hdr = struct.pack("!HHHH", sport, dport, udp_len, 0)
            udp_sum = checksum(pseudo + udp_hdr + rtp) or 0xFFFF
            udp = struct.pack("!HHHH", sport, dport, udp_len, udp_sum) + rtp
            ip_hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0, src, dst)
            ip_hdr = ip_hdr[:10] + struct.pack("!H", checksum(ip_hdr)) + ip_hdr[12:]
            eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
            frame = eth + ip_hdr + udp
            usec = i * 20000
            f.write(struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)))
            f.write(frame)


if __name__ == "__main__":
    main()
