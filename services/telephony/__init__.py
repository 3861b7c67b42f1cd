"""Sans-I/O telephony codecs: G.711 today; media-stream framing, SIP, SDP and RTP join them here."""
