"""Registering with a PBX as an extension (RFC 3261 §10), sans-I/O: responses and ``now`` in.

A PBX routes a call to one of its extensions only while that extension is registered: our
Contact bound to its address-of-record with an expiry. :class:`Registration` keeps that binding:

* it sends REGISTER (To/From the AOR, our Contact with ``expires``, one Call-ID for all its
  requests and a CSeq that grows, §10.2);
* a 401/407 challenge is answered (digest, :func:`.digest.answer`); a challenge to a REGISTER
  that carried credentials means they are wrong (``failed`` until the retry) unless it says
  ``stale=true`` (only the nonce aged: answered once more);
* 423 Interval Too Brief → again with the registrar's ``Min-Expires`` (§10.2.8);
* 200 → ``registered`` with the expiry the registrar granted (its Contact's ``expires``, else
  the Expires header, else ours), refreshed at 80% of it (never later than 30 s before it ends);
* any other failure, or no answer (the transaction layer's Timeout) → ``failed``, retried after
  ``retry_s`` (doubling to 5 minutes), so a PBX restart is survived without an operator.

It builds requests; the UAS sends them through its transaction layer and hands back what comes.
"""

from __future__ import annotations

import secrets
from typing import Literal

from services.errors import SipError
from services.telephony.sip.digest import answer, choose_challenge, parse_auth_params
from services.telephony.sip.headers import NameAddr, new_call_id, new_tag
from services.telephony.sip.message import Address, SipRequest, SipResponse, build_request

State = Literal["idle", "registering", "registered", "failed"]
MAX_RETRY_S = 300.0


class Registration:
    def __init__(
        self,
        *,
        registrar: Address,
        aor: str,  # sip:agent@pbx.example.com
        contact: str,  # sip:callray@<our address>:<port>
        sent_by: Address,
        username: str = "",
        password: str = "",
        expires: int = 3600,
        retry_s: float = 30.0,
    ) -> None:
        self.registrar = registrar
        self.aor = aor
        self.contact = contact
        self.sent_by = sent_by
        self.username = username
        self._password = password
        self.expires = expires
        self.retry_s = retry_s
        self.state: State = "idle"
        self.granted = 0  # the expiry the registrar granted, s
        self.reason = ""  # why the last attempt failed
        self._call_id = new_call_id(sent_by[0])
        self._tag = new_tag()
        self._cseq = 0
        self._due: float | None = 0.0  # when the next REGISTER goes out
        self._with_credentials = False  # the REGISTER in flight carries credentials
        self._stale_answers = 0
        self._backoff = retry_s

    @property
    def next_due(self) -> float | None:
        return self._due

    def due(self, now: float) -> SipRequest | None:
        """The REGISTER to send now, if one is due."""
        if self._due is None or now < self._due:
            return None
        self._due = None  # until the answer (or the transaction's timeout) says otherwise
        self.state = "registering"
        self._with_credentials = False
        self._stale_answers = 0
        return self._request()

    def on_response(self, response: SipResponse, now: float) -> SipRequest | None:
        """A final response to our REGISTER; returns the next REGISTER to send at once (an
        answered challenge, a longer expiry), if any."""
        status = response.status
        if status in (401, 407):
            header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
            try:
                challenge = choose_challenge(response.headers.get_all(header))
            except SipError:
                return self._fail(now, "no digest challenge we can answer")
            stale = _param(challenge, "stale").lower() == "true"
            if not self.username or (self._with_credentials and not stale):
                return self._fail(now, "the registrar refused our credentials")
            if stale and self._stale_answers >= 1:
                return self._fail(now, "the registrar keeps saying our nonce is stale")
            self._stale_answers += stale
            self._with_credentials = True
            credentials = answer(
                challenge,
                "REGISTER",
                self._uri(),
                self.username,
                self._password,
                secrets.token_hex(8),
                1,
            )
            name = "Authorization" if status == 401 else "Proxy-Authorization"
            return self._request([(name, credentials)])
        if status == 423:
            minimum = response.headers.get("Min-Expires")
            if minimum is None or not minimum.strip().isdigit():
                return self._fail(now, "423 without Min-Expires")
            self.expires = int(minimum.strip())
            return self._request()
        if 200 <= status < 300:
            self.granted = self._granted(response)
            self.state = "registered"
            self.reason = ""
            self._backoff = self.retry_s
            self._with_credentials = False
            self._stale_answers = 0
            self._due = now + max(1.0, min(0.8 * self.granted, self.granted - 30))
            return None
        return self._fail(now, f"registrar answered {status}")

    def on_timeout(self, now: float) -> None:
        self._fail(now, "no answer from the registrar")

    def _fail(self, now: float, reason: str) -> SipRequest | None:
        """Nothing to send now: the next try is due after the back-off."""
        self.state = "failed"
        self.reason = reason
        self._due = now + self._backoff
        self._backoff = min(self._backoff * 2, MAX_RETRY_S)
        return None

    def _granted(self, response: SipResponse) -> int:
        ours = NameAddr.parse(f"<{self.contact}>", "Contact").uri
        for contact in response.contacts:
            expires = contact.params.get("expires") or ""
            if contact.uri == ours and expires.isdigit():
                return int(expires)
        header = (response.headers.get("Expires") or "").strip()
        return int(header) if header.isdigit() else self.expires

    def _uri(self) -> str:
        host = self.aor.split("@", 1)[-1]
        return f"sip:{host}"

    def _request(self, headers: list[tuple[str, str]] | None = None) -> SipRequest:
        self._cseq += 1
        return build_request(
            "REGISTER",
            self._uri(),
            from_=NameAddr(self.aor).with_tag(self._tag),
            to=NameAddr(self.aor),
            call_id=self._call_id,
            cseq=self._cseq,
            sent_by=self.sent_by,
            contact=f"<{self.contact}>;expires={self.expires}",
            headers=[("Expires", str(self.expires)), *(headers or [])],
        )

    @property
    def call_id(self) -> str:
        return self._call_id


def _param(challenge: str, name: str) -> str:
    return parse_auth_params(challenge)[1].get(name, "")
