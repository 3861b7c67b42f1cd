"""Our own sans-I/O RFC 3261 subset for a trunk-facing UAS over UDP (issue 11).

Bytes and ``now`` in, bytes and events out; no sockets, clocks or asyncio in this package.
Layers, bottom up (import from the module, not from here):

* :mod:`.headers` - the ordered header collection and header values (Via, name-addr, CSeq).
* :mod:`.message` - parse a datagram into ``SipRequest`` / ``SipResponse``, serialize, build
  requests and responses (RFC 3261 §7, §8, §18, §20).
* :mod:`.transaction` - UDP transactions and their timers (§17, RFC 6026), the 2xx
  retransmission until ACK (§13.3.1.4).
* :mod:`.dialog` - UAS dialogs (§12) and in-dialog BYE / REFER / NOTIFY; SIP URIs for routing.
* :mod:`.digest` (authentication) and :mod:`.offer_answer` (SDP) sit beside them; the UAS core
  on top ties them together.
"""
